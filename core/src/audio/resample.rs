//! Band-limited sinc resampling to 16 kHz with rubato, fed incrementally: the decoder pushes
//! samples as it produces them, so the source-rate signal is never held whole.

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use super::AudioError;

/// Input block handed to rubato; also how much of `push`'s output a caller keeps back for `finish`.
pub const CHUNK: usize = 4096;

/// Sinc table points per input sample.
const OVERSAMPLING: usize = 128;

/// Cubic interpolation between the sinc table's points, except where every output sample falls on a
/// table point: when the output's spacing in input samples (`from / to`, as rubato computes it,
/// `1 / (to / from)` in f64) is exactly a multiple of 1/`OVERSAMPLING` — 48, 96, 32, 24 or 8 kHz
/// to 16 kHz. There the nearest point is the cubic's value (its weights are exactly 0, 1, 0, 0),
/// bit for bit, at a quarter of the work. Rates whose spacing is not exact in binary keep the cubic.
fn interpolation(from_hz: u32, to_hz: u32) -> SincInterpolationType {
    let spacing = 1.0 / (to_hz as f64 / from_hz as f64);
    if (spacing * OVERSAMPLING as f64).fract() == 0.0 {
        SincInterpolationType::Nearest
    } else {
        SincInterpolationType::Cubic
    }
}

fn internal(e: &dyn std::fmt::Display) -> AudioError {
    AudioError::Internal(e.to_string())
}

/// A resampler that takes input in pieces of any size and gives the same output as resampling the
/// whole signal at once (it always hands rubato the same `CHUNK`-sized blocks).
pub struct StreamResampler {
    inner: Option<SincFixedIn<f32>>,
    ratio: f64,
    pending: Vec<f32>,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, AudioError> {
        Self::with_interpolation(from_hz, to_hz, interpolation(from_hz, to_hz))
    }

    fn with_interpolation(
        from_hz: u32,
        to_hz: u32,
        interpolation: SincInterpolationType,
    ) -> Result<Self, AudioError> {
        let ratio = to_hz as f64 / from_hz as f64;
        let inner = if from_hz == to_hz {
            None
        } else {
            let params = SincInterpolationParameters {
                sinc_len: 128,
                f_cutoff: 0.95,
                interpolation,
                oversampling_factor: OVERSAMPLING,
                window: WindowFunction::BlackmanHarris2,
            };
            Some(SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK, 1).map_err(|e| internal(&e))?)
        };
        Ok(Self {
            inner,
            ratio,
            pending: Vec::with_capacity(CHUNK),
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Resample `input`, appending whatever output is ready to `out`.
    pub fn push(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.frames_in += input.len() as u64;
        let Some(r) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        while !input.is_empty() {
            let take = (CHUNK - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() == CHUNK {
                let frames = r
                    .process(&[&self.pending], None)
                    .map_err(|e| internal(&e))?;
                out.extend_from_slice(&frames[0]);
                self.frames_out += frames[0].len() as u64;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Process the last partial block and flush the filter's delay line, so the tail of the audio
    /// is not lost. All output, from `push` and from here, comes to exactly `round(frames_in ×
    /// ratio)` samples (what `push` already appended to `out` may have been taken away since).
    pub fn finish(mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let Some(r) = self.inner.as_mut() else {
            return Ok(());
        };
        // rubato 0.16's SincFixedIn output is already aligned with its input (measured: trimming
        // `output_delay()` advanced a tone by exactly that many samples), so no delay is removed.
        let expected = (self.frames_in as f64 * self.ratio).round() as u64;
        let before = out.len();
        if !self.pending.is_empty() {
            let frames = r
                .process_partial(Some(&[&self.pending]), None)
                .map_err(|e| internal(&e))?;
            out.extend_from_slice(&frames[0]);
        }
        while self.frames_out + ((out.len() - before) as u64) < expected {
            let frames = r
                .process_partial::<&[f32]>(None, None)
                .map_err(|e| internal(&e))?;
            if frames[0].is_empty() {
                break;
            }
            out.extend_from_slice(&frames[0]);
        }
        // The flush overshoots; the excess comes off the end of `out` (callers keep at least the
        // last `CHUNK` samples of `push`'s output there until now, in case it reaches back).
        let total = self.frames_out + (out.len() - before) as u64;
        let excess = total.saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(excess));
        Ok(())
    }
}

/// Resample mono `input` from `from_hz` to `to_hz` in one call. Returns the input unchanged when
/// the rates match.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    let mut out =
        Vec::with_capacity((input.len() as f64 * to_hz as f64 / from_hz as f64) as usize + CHUNK);
    let mut r = StreamResampler::new(from_hz, to_hz)?;
    r.push(input, &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
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
    fn pieces_of_any_size_give_the_same_output_as_one_call() {
        let x: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let whole = resample(&x, 44_100, 16_000).unwrap();
        let mut r = StreamResampler::new(44_100, 16_000).unwrap();
        let mut out = Vec::new();
        let (mut i, mut step) = (0usize, 1usize);
        while i < x.len() {
            let j = (i + step).min(x.len());
            r.push(&x[i..j], &mut out).unwrap();
            i = j;
            step = step * 3 % 9001 + 1;
        }
        r.finish(&mut out).unwrap();
        assert_eq!(
            out.len(),
            (50_000f64 * 16_000.0 / 44_100.0).round() as usize
        );
        assert_eq!(out, whole);
    }

    #[test]
    fn on_grid_rates_take_the_nearest_table_point_and_equal_the_cubic_bit_for_bit() {
        let x: Vec<f32> = (0..96_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5 + (i as f32 * 0.01).sin() * 0.3)
            .collect();
        for from in [48_000u32, 96_000, 32_000, 24_000, 8_000] {
            assert!(matches!(
                interpolation(from, 16_000),
                SincInterpolationType::Nearest
            ));
            let run = |how| {
                let mut r = StreamResampler::with_interpolation(from, 16_000, how).unwrap();
                let mut out = Vec::new();
                r.push(&x, &mut out).unwrap();
                r.finish(&mut out).unwrap();
                out
            };
            let (fast, cubic) = (
                run(SincInterpolationType::Nearest),
                run(SincInterpolationType::Cubic),
            );
            assert_eq!(fast.len(), cubic.len());
            let differ = fast
                .iter()
                .zip(&cubic)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{from} Hz: {differ} samples differ");
        }
        // 44.1 kHz is off the grid; 6125 Hz is on it in exact arithmetic but not in f64.
        for from in [44_100u32, 22_050, 11_025, 6_125] {
            assert!(matches!(
                interpolation(from, 16_000),
                SincInterpolationType::Cubic
            ));
        }
    }

    #[test]
    fn same_rate_is_identity() {
        let x = vec![0.1f32, 0.2, 0.3];
        assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    }
}
