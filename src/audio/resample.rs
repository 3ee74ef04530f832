//! Band-limited sinc resampling to 16 kHz with rubato.

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use super::AudioError;

const CHUNK: usize = 4096;

/// Resample mono `input` from `from_hz` to `to_hz`. Returns the input unchanged when the rates match.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    if from_hz == to_hz || input.is_empty() {
        return Ok(input.to_vec());
    }
    let ratio = to_hz as f64 / from_hz as f64;
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: 0.95,
        interpolation: SincInterpolationType::Cubic,
        oversampling_factor: 128,
        window: WindowFunction::BlackmanHarris2,
    };
    let err = |e: &dyn std::fmt::Display| AudioError::Internal(e.to_string());
    let mut resampler =
        SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK, 1).map_err(|e| err(&e))?;
    let expected = (input.len() as f64 * ratio).round() as usize;
    // rubato 0.16's SincFixedIn output is already aligned with its input (measured: trimming
    // `output_delay()` advanced a tone by exactly that many samples), so no delay is removed.
    let delay = 0usize;
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + CHUNK);

    let mut chunks = input.chunks_exact(CHUNK);
    for chunk in chunks.by_ref() {
        let frames = resampler.process(&[chunk], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&frames[0]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let frames = resampler
            .process_partial(Some(&[rest]), None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&frames[0]);
    }
    // Flush the filter's delay line so the tail of the audio is not lost.
    while out.len() < expected + delay {
        let frames = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        if frames[0].is_empty() {
            break;
        }
        out.extend_from_slice(&frames[0]);
    }
    let end = (delay + expected).min(out.len());
    Ok(out[delay.min(end)..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_length_and_tone() {
        for from in [8_000u32, 22_050, 44_100, 48_000] {
            keeps_tone_from(from);
        }
    }

    fn keeps_tone_from(from: u32) {
        let tone: Vec<f32> = (0..from as usize)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / from as f32).sin())
            .collect();
        let out = resample(&tone, from, 16_000).unwrap();
        assert_eq!(out.len(), 16_000);
        // Compare against the ideal 440 Hz tone at 16 kHz away from the edges, allowing a shift of
        // at most one output sample (62.5 µs; rubato leaves a fractional delay at non-integer ratios).
        let err_at = |lag: f32| {
            (1000..15_000)
                .map(|i: usize| {
                    let ideal =
                        (2.0 * std::f32::consts::PI * 440.0 * (i as f32 + lag) / 16_000.0).sin();
                    (out[i] - ideal).abs()
                })
                .fold(0f32, f32::max)
        };
        let max_err = (-10..=10)
            .map(|l| err_at(l as f32 / 10.0))
            .fold(f32::INFINITY, f32::min);
        assert!(
            max_err < 0.01,
            "{from} Hz: max error {max_err} (shifted in time?)"
        );
    }

    #[test]
    fn same_rate_is_identity() {
        let x = vec![0.1f32, 0.2, 0.3];
        assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    }
}
