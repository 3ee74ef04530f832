//! Opus packets (demuxed from Ogg by symphonia) decoded with libopus: symphonia has no Opus codec.

use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatReader;

use super::decode::{check_truncation, Sink};
use super::AudioError;

/// libopus always decodes at 48 kHz here; the resampler brings it to 16 kHz.
pub const OPUS_RATE: u32 = 48_000;
/// The longest Opus frame is 120 ms.
const MAX_FRAME: usize = OPUS_RATE as usize * 120 / 1000;

pub fn decode_opus_track(
    format: &mut dyn FormatReader,
    track_id: u32,
    params: &CodecParameters,
    max_s: Option<f64>,
    split: bool,
) -> Result<Vec<super::spill::SpillBuffer>, AudioError> {
    let channels = params.channels.map(|c| c.count()).unwrap_or(1).clamp(1, 2);
    let layout = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut decoder = opus::Decoder::new(OPUS_RATE, layout)
        .map_err(|e| AudioError::Corrupt(format!("opus decoder: {e}")))?;
    let mut pcm = vec![0f32; MAX_FRAME * channels];
    let mut sink = Sink::new(OPUS_RATE, max_s, split)?;
    // Opus streams start with encoder pre-skip samples (delay) that are not part of the audio.
    let pre_skip = params.delay.unwrap_or(0) as usize;
    let mut to_skip = pre_skip;
    let mut bad = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(_)) | Err(SymError::ResetRequired) => break,
            Err(e) if sink.frames_in() == 0 => return Err(AudioError::Corrupt(e.to_string())),
            Err(_) => break,
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode_float(&packet.data, &mut pcm, false) {
            Ok(n) => {
                let skip = to_skip.min(n);
                to_skip -= skip;
                sink.push_interleaved(&pcm[skip * channels..n * channels], channels)?;
            }
            Err(e) => {
                bad += 1;
                if bad > 16 {
                    return Err(AudioError::Corrupt(format!("opus: {e}")));
                }
            }
        }
    }
    if sink.frames_in() == 0 {
        return Err(AudioError::NoSamples);
    }
    // n_frames in an Ogg/Opus track is counted at 48 kHz.
    check_truncation(
        params.n_frames,
        sink.frames_in() as usize + pre_skip,
        OPUS_RATE,
    )?;
    sink.finish()
}
