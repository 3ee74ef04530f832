//! Audio front end: bytes of any common container → 16 kHz mono `f32` samples.
//!
//! `decode` (symphonia, plus libopus for Opus) turns bytes into samples at the file's own rate,
//! mixed to mono; `resample` brings them to Whisper's 16 kHz. Nothing here knows about models.

mod decode;
#[cfg(feature = "opus")]
mod opus;
mod resample;

pub use decode::decode_mono;
pub use resample::resample;

/// Whisper's input sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// 16 kHz mono audio, ready for the log-mel front end.
#[derive(Debug, Clone)]
pub struct Pcm {
    pub samples: Vec<f32>,
}

impl Pcm {
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
    #[error("the audio decoded to zero samples")]
    NoSamples,
    #[error("audio is {duration_s:.1} s long, over the limit of {limit_s:.1} s")]
    TooLong { duration_s: f64, limit_s: f64 },
    #[error("resampling failed: {0}")]
    Internal(String),
}

/// Decode any supported container from memory and return 16 kHz mono samples.
pub fn load_pcm<B>(bytes: B) -> Result<Pcm, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    let decoded = decode_mono(bytes)?;
    let samples = if decoded.sample_rate == SAMPLE_RATE {
        decoded.samples // already 16 kHz: no copy
    } else {
        resample(&decoded.samples, decoded.sample_rate, SAMPLE_RATE)?
    };
    if samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(Pcm { samples })
}

/// Mono samples at the file's own sample rate.
#[derive(Debug, Clone)]
pub struct MonoAudio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}
