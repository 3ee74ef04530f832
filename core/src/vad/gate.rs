//! The energy gate: long runs of near-silence, found in one pass over the samples. It never
//! needs a model, so digital silence and very low noise floors cost nothing downstream (an hour of
//! silence would otherwise be 112,500 sequential Silero frames and 120 decoder windows).

use super::silero::FRAME;
use crate::audio::spill::{for_each_block, Samples, SpillError};

/// Frames this far below the recording's loudest frame may be near-silence (the gate then never
/// cuts a quiet recording's speech: its own level sets the bar).
pub const GATE_RELATIVE_DB: f32 = 50.0;
/// Below this a frame is silence whatever the recording (digital silence, dither).
pub const GATE_FLOOR_DB: f32 = -90.0;
/// Only runs of at least this many quiet frames (about 1 s) are gated: short pauses inside
/// speech stay with Silero and the decoder.
const MIN_RUN_FRAMES: usize = 32;

/// One flag per 512-sample frame (as many frames as Silero sees: `len / 512 + 1`): whether the
/// frame lies in a run of near-silence. A frame is quiet when its RMS level is below
/// `min(gate_db, loudest frame − GATE_RELATIVE_DB)` dBFS, or below `GATE_FLOOR_DB`.
pub fn quiet_frames(samples: &dyn Samples, gate_db: f32) -> Result<Vec<bool>, SpillError> {
    let n_frames = samples.len() / FRAME + 1;
    let mut level: Vec<f32> = Vec::with_capacity(n_frames);
    // Blocks of whole frames, so every frame but the last is whole.
    for_each_block(samples, FRAME * 256, |_, block| {
        level.extend(block.chunks(FRAME).map(|s| {
            let ms = s.iter().map(|&x| x * x).sum::<f32>() / s.len() as f32;
            10.0 * ms.log10()
        }))
    })?;
    // The frame past a recording that ends on a frame boundary holds nothing.
    level.resize(n_frames, f32::NEG_INFINITY);
    let loudest = level.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let bar = gate_db.min(loudest - GATE_RELATIVE_DB);
    let quiet: Vec<bool> = level
        .iter()
        .map(|&l| l < bar || l < GATE_FLOOR_DB)
        .collect();
    let mut gated = vec![false; n_frames];
    let mut f = 0;
    while f < n_frames {
        if !quiet[f] {
            f += 1;
            continue;
        }
        let start = f;
        while f < n_frames && quiet[f] {
            f += 1;
        }
        if f - start >= MIN_RUN_FRAMES {
            gated[start..f].fill(true);
        }
    }
    Ok(gated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|i| amp * (i as f32 * 0.07).sin()).collect()
    }

    #[test]
    fn gates_long_silence_only() {
        let sr = 16_000;
        let mut x = tone(2 * sr, 0.3);
        x.extend(vec![0.0; sr / 2]); // 0.5 s pause: kept
        x.extend(tone(sr, 0.3));
        x.extend(vec![0.0; 3 * sr]); // 3 s silence: gated
        x.extend(tone(sr, 0.3));
        let q = quiet_frames(&x, -60.0).unwrap();
        let at = |s: f64| q[(s * sr as f64) as usize / FRAME];
        assert!(!at(1.0) && !at(2.25) && !at(3.0));
        assert!(at(4.0) && at(5.5));
        assert!(!at(6.6));
    }

    #[test]
    fn quiet_recordings_keep_their_speech() {
        // a whole recording at -66 dBFS: below gate_db, but not 50 dB below its own loudest
        let x = tone(5 * 16_000, 0.0007);
        assert!(quiet_frames(&x, -60.0).unwrap().iter().all(|&g| !g));
        // a -66 dBFS noise floor beside -11 dBFS speech is far below it: gated
        let mut y = tone(16_000, 0.4);
        y.extend(tone(3 * 16_000, 0.0007));
        let q = quiet_frames(&y, -60.0).unwrap();
        assert!(
            q[(2 * 16_000) / FRAME],
            "a noise floor 50+ dB down and under -60 dBFS is gated"
        );
        // all digital silence is gated whatever the bar
        assert!(quiet_frames(&vec![0.0; 3 * 16_000], -60.0)
            .unwrap()
            .iter()
            .all(|&g| g));
    }
}
