//! Audio front end: bytes of any common container → 16 kHz mono `f32` samples.
//!
//! `decode` (symphonia, plus libopus for Opus) turns bytes into samples, mixed to mono and passed
//! packet by packet through `resample` to Whisper's 16 kHz, counted against a length limit as they
//! come. Nothing here knows about models.

mod decode;
#[cfg(feature = "opus")]
mod opus;
pub mod resample;
pub mod spill;

pub use decode::{MAX_SAMPLE_RATE, MAX_SPLIT_CHANNELS, MIN_SAMPLE_RATE};
pub use resample::{resample, StreamResampler};
pub use spill::{Samples, SpillBuffer, SpillError};

/// How a recording's channels become the speech that is transcribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// Averaged into one signal.
    #[default]
    #[serde(alias = "mono")]
    Mix,
    /// Each channel transcribed alone (a call recording with each party on its own channel),
    /// its segments labelled `CHANNEL_<n>` (from 0) and merged on one timeline.
    Split,
}

impl Channels {
    pub fn as_str(self) -> &'static str {
        match self {
            Channels::Mix => "mix",
            Channels::Split => "split",
        }
    }
}

impl std::str::FromStr for Channels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mix" | "mono" => Ok(Channels::Mix),
            "split" => Ok(Channels::Split),
            other => Err(format!(
                "unknown channels `{other}` (expected mix or split)"
            )),
        }
    }
}

impl std::fmt::Display for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whisper's input sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// 16 kHz mono audio, ready for the log-mel front end. Long audio lives in a temporary file
/// (see [`spill`]), so holding a `Pcm` costs at most [`spill::SPILL_AFTER`] values of memory.
#[derive(Debug)]
pub struct Pcm {
    pub samples: SpillBuffer,
}

impl Pcm {
    /// Samples already in memory (a test tone, a live stream's buffer).
    pub fn from_samples(samples: Vec<f32>) -> Result<Self, AudioError> {
        Ok(Self {
            samples: SpillBuffer::from_vec(samples)?,
        })
    }

    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

/// Why a piece of audio could not be turned into samples. Every variant is the caller's input at
/// fault (a 4xx at the HTTP edge), except `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("the audio is empty (0 bytes)")]
    Empty,
    #[error("not a recognised audio file: {0}")]
    NotAudio(String),
    #[error("the file holds no audio track")]
    NoAudioTrack,
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    #[error("corrupt audio stream: {0}")]
    Corrupt(String),
    #[error("truncated or damaged audio: the container declares {declared_s:.2} s but only {decoded_s:.2} s could be decoded")]
    Truncated { declared_s: f64, decoded_s: f64 },
    #[error("truncated audio: {0}")]
    TruncatedStream(String),
    #[error("the audio holds non-finite sample values (NaN or infinity) from {at_s:.2} s")]
    NonFinite { at_s: f64 },
    #[error("the audio could not be decoded: the decoder failed on malformed data ({0})")]
    DecoderPanic(String),
    #[error("the audio decoded to zero samples")]
    NoSamples,
    #[error("audio is at least {duration_s:.1} s long, over the limit of {limit_s:.1} s")]
    TooLong { duration_s: f64, limit_s: f64 },
    #[error("channels=split takes at most {max} channels; the audio has {channels}")]
    TooManyChannels { channels: usize, max: usize },
    #[error("resampling failed: {0}")]
    Internal(String),
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// Decode any supported container from memory and return 16 kHz mono samples. With `max_s`, audio
/// longer than that many seconds is refused (from the container's declared length where it has one,
/// otherwise as soon as decoding passes it), so memory stays bounded by the limit. A panic inside
/// a decoder library on malformed data is contained here and reported as `DecoderPanic`.
pub fn load_pcm<B>(bytes: B, max_s: Option<f64>) -> Result<Pcm, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    let mut one = load(bytes, max_s, false)?;
    one.pop().ok_or(AudioError::NoSamples)
}

/// As [`load_pcm`], one signal per channel of the file (at most [`MAX_SPLIT_CHANNELS`]), in
/// channel order: for recordings that put each party of a call on its own channel.
pub fn load_channels<B>(bytes: B, max_s: Option<f64>) -> Result<Vec<Pcm>, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    load(bytes, max_s, true)
}

fn load<B>(bytes: B, max_s: Option<f64>, split: bool) -> Result<Vec<Pcm>, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode::decode_to_16k(bytes, max_s, split)
    }));
    let signals = match decoded {
        Ok(r) => r?,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "audio decoder panicked on malformed input; answered as invalid audio");
            return Err(AudioError::DecoderPanic(what));
        }
    };
    if signals.is_empty() || signals.iter().any(|s| s.is_empty()) {
        return Err(AudioError::NoSamples);
    }
    Ok(signals.into_iter().map(|samples| Pcm { samples }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit WAV at 16 kHz, channels interleaved.
    fn wav(channels: &[Vec<f32>]) -> Vec<u8> {
        let (n, ch) = (channels[0].len(), channels.len() as u16);
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&(36 + (n * 2 * ch as usize) as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        for v in [
            16u32.to_le_bytes().as_slice(),
            &1u16.to_le_bytes(),
            &ch.to_le_bytes(),
        ] {
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&16_000u32.to_le_bytes());
        b.extend_from_slice(&(32_000 * ch as u32).to_le_bytes());
        b.extend_from_slice(&(2 * ch).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&((n * 2 * ch as usize) as u32).to_le_bytes());
        for i in 0..n {
            for c in channels {
                b.extend_from_slice(&((c[i] * 32767.0) as i16).to_le_bytes());
            }
        }
        b
    }

    fn rms(p: &Pcm) -> f32 {
        let v = p.samples.to_vec().unwrap();
        (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
    }

    #[test]
    fn split_keeps_each_channel_apart_and_mix_averages_them() {
        let tone: Vec<f32> = (0..16_000)
            .map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin())
            .collect();
        let bytes = wav(&[tone.clone(), vec![0.0; tone.len()], tone]);
        let split = load_channels(bytes.clone(), None).unwrap();
        assert_eq!(split.len(), 3);
        let (a, b, c) = (rms(&split[0]), rms(&split[1]), rms(&split[2]));
        assert!((a - 0.354).abs() < 0.01, "{a}");
        assert!(b < 1e-6, "{b}");
        assert!((c - a).abs() < 1e-6);
        assert!(split.iter().all(|p| p.samples.len() == 16_000));
        let mixed = load_pcm(bytes, None).unwrap();
        assert!(
            (rms(&mixed) - a * 2.0 / 3.0).abs() < 0.01,
            "{}",
            rms(&mixed)
        );
    }

    #[test]
    fn split_refuses_more_channels_than_it_takes() {
        let bytes = wav(&vec![vec![0.1; 1600]; MAX_SPLIT_CHANNELS + 1]);
        match load_channels(bytes.clone(), None) {
            Err(AudioError::TooManyChannels {
                channels: 9,
                max: 8,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(load_pcm(bytes, None).is_ok());
        assert_eq!("split".parse::<Channels>(), Ok(Channels::Split));
        assert_eq!(" Mono ".parse::<Channels>(), Ok(Channels::Mix));
        assert!("left"
            .parse::<Channels>()
            .unwrap_err()
            .contains("mix or split"));
    }
}
