//! Speech probabilities per frame → speech regions in samples, with faster-whisper's rules
//! (`get_speech_timestamps`): speech starts at a frame ≥ `threshold`, ends after
//! `min_silence_duration_ms` below `neg_threshold`, regions longer than `max_speech_duration_s`
//! are split at their last silence of ≥ 98 ms, short regions are dropped, and each region is
//! padded by `speech_pad_ms` (half the gap when two regions are closer than twice that).

use std::ops::Range;

use super::silero::FRAME;
use super::VadOptions;
use crate::audio::SAMPLE_RATE;

pub fn speech_timestamps(probs: &[f32], total: usize, o: &VadOptions) -> Vec<Range<usize>> {
    let sr = SAMPLE_RATE as f64;
    let win = FRAME as f64;
    let threshold = o.threshold;
    let neg_threshold = o
        .neg_threshold
        .unwrap_or_else(|| (threshold - 0.15).max(0.01));
    let min_speech = sr * o.min_speech_duration_ms as f64 / 1000.0;
    let pad = sr * o.speech_pad_ms as f64 / 1000.0;
    let max_speech = sr * o.max_speech_duration_s as f64 - win - 2.0 * pad;
    let min_silence = sr * o.min_silence_duration_ms as f64 / 1000.0;
    let min_silence_at_max_speech = sr * 98.0 / 1000.0;

    let mut triggered = false;
    let mut speeches: Vec<(i64, i64)> = Vec::new();
    let mut current: Option<i64> = None; // start of the current speech
    let mut temp_end: i64 = 0;
    let mut prev_end: i64 = 0;
    let mut next_start: i64 = 0;
    for (i, &p) in probs.iter().enumerate() {
        let pos = (FRAME * i) as i64;
        if p >= threshold && temp_end != 0 {
            temp_end = 0;
            if next_start < prev_end {
                next_start = pos;
            }
        }
        if p >= threshold && !triggered {
            triggered = true;
            current = Some(pos);
            continue;
        }
        if let (true, Some(start)) = (triggered, current) {
            if (pos - start) as f64 > max_speech {
                if prev_end != 0 {
                    speeches.push((start, prev_end));
                    current = None;
                    if next_start < prev_end {
                        triggered = false;
                    } else {
                        current = Some(next_start);
                    }
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                } else {
                    speeches.push((start, pos));
                    current = None;
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                    triggered = false;
                    continue;
                }
            }
        }
        if p < neg_threshold && triggered {
            if temp_end == 0 {
                temp_end = pos;
            }
            if (pos - temp_end) as f64 > min_silence_at_max_speech {
                prev_end = temp_end;
            }
            if ((pos - temp_end) as f64) < min_silence {
                continue;
            }
            if let Some(start) = current {
                if (temp_end - start) as f64 > min_speech {
                    speeches.push((start, temp_end));
                }
            }
            current = None;
            (prev_end, next_start, temp_end) = (0, 0, 0);
            triggered = false;
            continue;
        }
    }
    let total_i = total as i64;
    if let Some(start) = current {
        if (total_i - start) as f64 > min_speech {
            speeches.push((start, total_i));
        }
    }

    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - pad).max(0.0) as i64;
        }
        if i + 1 < n {
            let silence = speeches[i + 1].0 - speeches[i].1;
            if (silence as f64) < 2.0 * pad {
                speeches[i].1 += silence / 2;
                speeches[i + 1].0 = (speeches[i + 1].0 - silence / 2).max(0);
            } else {
                speeches[i].1 = ((speeches[i].1 as f64 + pad).min(total as f64)) as i64;
                speeches[i + 1].0 = (speeches[i + 1].0 as f64 - pad).max(0.0) as i64;
            }
        } else {
            speeches[i].1 = ((speeches[i].1 as f64 + pad).min(total as f64)) as i64;
        }
    }
    speeches
        .into_iter()
        .map(|(s, e)| (s.max(0) as usize).min(total)..(e.max(0) as usize).min(total))
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(spec: &[(f32, usize)]) -> Vec<f32> {
        spec.iter()
            .flat_map(|&(p, n)| std::iter::repeat_n(p, n))
            .collect()
    }

    #[test]
    fn hysteresis_min_silence_and_padding() {
        let o = VadOptions::default();
        // 1 s of silence, 2 s speech, 1 s dip (< min silence 2 s: same region), 1 s speech,
        // 3 s silence, 1 s speech, 1 s silence
        let fps = 16_000 / FRAME; // 31 frames ≈ 0.99 s
        let p = frames(&[
            (0.1, fps),
            (0.9, 2 * fps),
            (0.2, fps),
            (0.9, fps),
            (0.05, 3 * fps),
            (0.9, fps),
            (0.05, fps),
        ]);
        let total = p.len() * FRAME;
        let r = speech_timestamps(&p, total, &o);
        assert_eq!(r.len(), 2, "{r:?}");
        let pad = 6400;
        assert_eq!(r[0].start, fps * FRAME - pad);
        assert_eq!(r[0].end, (5 * fps) * FRAME + pad);
        assert_eq!(r[1].start, (8 * fps) * FRAME - pad);
        // the final region runs to the end (speech had not ended for min_silence)
        assert_eq!(r[1].end, total);
        // between threshold and neg_threshold: continues speech, never starts it
        let p = frames(&[(0.4, 20), (0.9, 10), (0.4, 100), (0.1, 100)]);
        let r = speech_timestamps(&p, p.len() * FRAME, &o);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].start, 20 * FRAME - pad);
        assert_eq!(r[0].end, 130 * FRAME + pad);
        assert!(speech_timestamps(&[0.0; 50], 50 * FRAME, &o).is_empty());
    }

    #[test]
    fn long_speech_splits_at_a_silence() {
        let o = VadOptions {
            max_speech_duration_s: 5.0,
            ..VadOptions::default()
        };
        let fps = 16_000 / FRAME;
        let p = frames(&[(0.9, 3 * fps), (0.1, 5), (0.9, 4 * fps), (0.1, 3 * fps)]);
        let r = speech_timestamps(&p, p.len() * FRAME, &o);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|x| x.len() <= 16_000 * 5 + 2 * 6400), "{r:?}");
    }
}
