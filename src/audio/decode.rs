//! Container and codec decoding with symphonia, from bytes in memory, mixed down to mono.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{AudioError, MonoAudio};

/// A stream may carry a few damaged packets (as real-world mp3s do); more than this many in a row
/// and the stream is reported as corrupt instead of silently producing garbage.
const MAX_CONSECUTIVE_BAD_PACKETS: usize = 16;

/// Decode the first audio track of any container symphonia knows (and Ogg/Opus) into mono samples.
pub fn decode_mono<B>(bytes: B) -> Result<MonoAudio, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    if bytes.as_ref().is_empty() {
        return Err(AudioError::Empty);
    }
    let wav_tag = wav_format_tag(bytes.as_ref());
    let total_len = bytes.as_ref().len() as u64;
    let source = TrackingSource::new(bytes);
    let position = source.position.clone();
    let mss = MediaSourceStream::new(Box::new(source), MediaSourceStreamOptions::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            mss,
            &FormatOptions {
                enable_gapless: true,
                ..Default::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| match (&e, wav_tag) {
            (SymError::Unsupported(_), Some(tag)) => {
                AudioError::UnsupportedCodec(wav_codec_name(tag))
            }
            (SymError::IoError(io), _) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                AudioError::Corrupt("the file ends inside its header (truncated?)".into())
            }
            _ => AudioError::NotAudio(describe(&e)),
        })?;
    let mut format = probed.format;
    let track = match format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
    {
        Some(t) => t,
        // Tracks exist, but in a codec symphonia does not know (AC-3, WMA, …).
        None if !format.tracks().is_empty() => {
            return Err(AudioError::UnsupportedCodec(format!(
                "the audio track's codec is not one whisperd decodes ({SUPPORTED_CODECS})"
            )))
        }
        None => return Err(AudioError::NoAudioTrack),
    };
    let track_id = track.id;
    let params = track.codec_params.clone();

    #[cfg(feature = "opus")]
    if params.codec == symphonia::core::codecs::CODEC_TYPE_OPUS {
        return super::opus::decode_opus_track(format.as_mut(), track_id, &params);
    }

    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|_| AudioError::UnsupportedCodec(codec_name(params.codec)))?;
    let mut sample_rate = params.sample_rate.unwrap_or(0);
    let mut mono: Vec<f32> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut bad_in_a_row = 0usize;
    let mut bad_packets = 0usize;
    let mut first_error: Option<String> = None;

    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                // A container error after good audio is a truncated/damaged tail; before any, corrupt.
                if mono.is_empty() {
                    return Err(AudioError::Corrupt(describe(&e)));
                }
                first_error.get_or_insert_with(|| describe(&e));
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                bad_in_a_row = 0;
                let spec = *decoded.spec();
                sample_rate = spec.rate;
                let channels = spec.channels.count().max(1);
                let needed = decoded.capacity() as u64;
                let sb = match &mut buf {
                    Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
                    _ => buf.insert(SampleBuffer::<f32>::new(needed, spec)),
                };
                sb.copy_interleaved_ref(decoded);
                mix_into(&mut mono, sb.samples(), channels);
            }
            Err(SymError::DecodeError(msg)) => {
                bad_in_a_row += 1;
                bad_packets += 1;
                first_error.get_or_insert_with(|| msg.to_string());
                if bad_in_a_row > MAX_CONSECUTIVE_BAD_PACKETS {
                    return Err(AudioError::Corrupt(msg.to_string()));
                }
            }
            Err(SymError::IoError(_)) => break,
            Err(e) => return Err(AudioError::Corrupt(describe(&e))),
        }
    }

    if mono.is_empty() {
        return Err(match first_error {
            Some(e) => AudioError::Corrupt(e),
            None => AudioError::NoSamples,
        });
    }
    if sample_rate == 0 {
        return Err(AudioError::Corrupt(
            "the stream declares no sample rate".into(),
        ));
    }
    // Damage shows as packets that failed to decode, or as a reader that lost sync and stopped
    // long before the end of the bytes; a clean stream that just stops early is truncated.
    let read_up_to = position.load(Ordering::Relaxed);
    let unread = total_len.saturating_sub(read_up_to);
    if bad_packets > 0 || (unread > 4096 && unread * 10 > total_len) {
        let why = first_error.unwrap_or_else(|| "the stream lost sync".into());
        return Err(AudioError::Corrupt(format!(
            "{why}; {bad_packets} damaged packet(s), decoding stopped at byte {read_up_to} of {total_len}"
        )));
    }
    check_truncation(params.n_frames, mono.len(), sample_rate)?;
    Ok(MonoAudio {
        samples: mono,
        sample_rate,
    })
}

/// A seekable in-memory source that publishes its read position, so a reader that gave up
/// half-way through damaged data can be told from one that reached the end.
struct TrackingSource<B> {
    inner: Cursor<B>,
    position: Arc<AtomicU64>,
}

impl<B: AsRef<[u8]>> TrackingSource<B> {
    fn new(bytes: B) -> Self {
        Self {
            inner: Cursor::new(bytes),
            position: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<B: AsRef<[u8]>> Read for TrackingSource<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position
            .store(self.inner.position(), Ordering::Relaxed);
        Ok(n)
    }
}

impl<B: AsRef<[u8]>> Seek for TrackingSource<B> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let p = self.inner.seek(pos)?;
        self.position.store(p, Ordering::Relaxed);
        Ok(p)
    }
}

impl<B: AsRef<[u8]> + Send + Sync> symphonia::core::io::MediaSource for TrackingSource<B> {
    fn is_seekable(&self) -> bool {
        true
    }
    fn byte_len(&self) -> Option<u64> {
        Some(self.inner.get_ref().as_ref().len() as u64)
    }
}

/// Average interleaved channels into `out`.
pub(super) fn mix_into(out: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
    if channels == 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
}

/// A container that declares its length but yields clearly less is a truncated upload.
/// Encoders pad and estimate, so small shortfalls (< 2 %, < 0.5 s) are tolerated.
pub(super) fn check_truncation(
    declared_frames: Option<u64>,
    decoded_frames: usize,
    sample_rate: u32,
) -> Result<(), AudioError> {
    if let Some(declared) = declared_frames {
        let declared_s = declared as f64 / sample_rate as f64;
        let decoded_s = decoded_frames as f64 / sample_rate as f64;
        if decoded_s < declared_s * 0.98 && declared_s - decoded_s > 0.5 {
            return Err(AudioError::Truncated {
                declared_s,
                decoded_s,
            });
        }
    }
    Ok(())
}

const SUPPORTED_CODECS: &str = "supported: PCM, FLAC, MP3, AAC, Vorbis, Opus, ALAC, ADPCM";

/// The `fmt ` chunk's format tag of a RIFF/WAVE file, to name an unsupported WAV codec.
fn wav_format_tag(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12usize;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let size = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        if id == b"fmt " && pos + 10 <= b.len() {
            return Some(u16::from_le_bytes([b[pos + 8], b[pos + 9]]));
        }
        pos = pos.checked_add(8 + size + (size & 1))?;
    }
    None
}

fn wav_codec_name(tag: u16) -> String {
    let name = match tag {
        0x0031 => "GSM 6.10",
        0x0040 | 0x0045 | 0x0064 => "G.721/G.726 ADPCM",
        0x0050 => "MPEG-1 audio in WAV",
        0x0055 => "MP3 in WAV",
        0x0160..=0x0163 => "Windows Media Audio",
        0x0092 | 0x2000 => "AC-3",
        _ => "",
    };
    if name.is_empty() {
        format!("WAV format tag 0x{tag:04x} ({SUPPORTED_CODECS})")
    } else {
        format!("{name} in WAV ({SUPPORTED_CODECS})")
    }
}

fn codec_name(codec: symphonia::core::codecs::CodecType) -> String {
    symphonia::default::get_codecs()
        .get_codec(codec)
        .map(|d| d.short_name.to_string())
        .unwrap_or_else(|| format!("codec id {codec}"))
}

fn describe(e: &SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "unexpected end of data".to_string()
        }
        SymError::Unsupported(what) => format!("unsupported feature: {what}"),
        other => other.to_string(),
    }
}
