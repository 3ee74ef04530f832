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

pub use decode::{MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
pub use resample::{resample, StreamResampler};
pub use spill::{Samples, SpillBuffer, SpillError};

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
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode::decode_to_16k(bytes, max_s)
    }));
    let samples = match decoded {
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
    if samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(Pcm { samples })
}
