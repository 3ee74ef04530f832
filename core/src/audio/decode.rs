//! Container and codec decoding with symphonia, from bytes in memory, mixed down to mono (or, with
//! `split`, one signal per channel).

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

use super::resample::{StreamResampler, CHUNK};
use super::spill::SpillBuffer;
use super::{AudioError, SAMPLE_RATE};

/// A stream may carry a few damaged packets (as real-world mp3s do); more than this many in a row
/// and the stream is reported as corrupt instead of silently producing garbage.
const MAX_CONSECUTIVE_BAD_PACKETS: usize = 16;

/// Sample rates accepted from a file's header: telephony's 8 kHz and below down to 1 kHz, up to
/// the highest rate any recorder writes. Outside this range a header is damaged or hostile (a
/// 1 Hz header turns 32 KB of data into nine hours of audio).
pub const MIN_SAMPLE_RATE: u32 = 1_000;
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Decode the first audio track of any container symphonia knows (and Ogg/Opus), mix it to mono
/// (or with `split` keep each channel apart: one signal per channel, at most
/// [`MAX_SPLIT_CHANNELS`]) and resample it to 16 kHz as packets arrive. With `max_s`, a container that declares more is
/// refused before decoding, and decoding stops as soon as the audio passes the limit, so memory is
/// bounded by the limit whatever the file claims or expands to.
pub fn decode_to_16k<B>(
    bytes: B,
    max_s: Option<f64>,
    split: bool,
) -> Result<Vec<SpillBuffer>, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    if bytes.as_ref().is_empty() {
        return Err(AudioError::Empty);
    }
    check_header_fields(bytes.as_ref())?;
    let ogg_tail = ogg_tail(bytes.as_ref());
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
    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
        // n_frames of Ogg/Opus counts 48 kHz frames whatever the input rate said.
        #[cfg(feature = "opus")]
        let rate = if params.codec == symphonia::core::codecs::CODEC_TYPE_OPUS {
            super::opus::OPUS_RATE
        } else {
            rate
        };
        if let (Some(limit_s), Some(frames)) = (max_s, params.n_frames) {
            let declared_s = frames as f64 / rate as f64;
            if declared_s > limit_s {
                return Err(AudioError::TooLong {
                    duration_s: declared_s,
                    limit_s,
                });
            }
        }
    }
    if let Some(tail) = ogg_tail {
        // Ogg declares no length up front; its last page says whether the stream is complete.
        if let Some(why) = tail.incomplete() {
            return Err(AudioError::TruncatedStream(why));
        }
    }

    #[cfg(feature = "opus")]
    if params.codec == symphonia::core::codecs::CODEC_TYPE_OPUS {
        return super::opus::decode_opus_track(format.as_mut(), track_id, &params, max_s, split);
    }

    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|_| AudioError::UnsupportedCodec(codec_name(params.codec)))?;
    let mut sink: Option<Sink> = None;
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
                if sink.as_ref().is_none_or(|s| s.frames_in() == 0) {
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
                let sink = match &mut sink {
                    Some(s) if s.rate == spec.rate => s,
                    Some(s) => {
                        return Err(AudioError::Corrupt(format!(
                            "the sample rate changes mid-stream ({} Hz, then {} Hz)",
                            s.rate, spec.rate
                        )))
                    }
                    None => sink.insert(Sink::new(spec.rate, max_s, split)?),
                };
                let channels = spec.channels.count().max(1);
                let needed = decoded.capacity() as u64;
                let sb = match &mut buf {
                    Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
                    _ => buf.insert(SampleBuffer::<f32>::new(needed, spec)),
                };
                sb.copy_interleaved_ref(decoded);
                sink.push_interleaved(sb.samples(), channels)?;
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

    let sink = match sink {
        Some(s) if s.frames_in() > 0 => s,
        _ => {
            return Err(match first_error {
                Some(e) => AudioError::Corrupt(e),
                None => AudioError::NoSamples,
            })
        }
    };
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
    check_truncation(params.n_frames, sink.frames_in() as usize, sink.rate)?;
    sink.finish()
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::Corrupt(format!(
            "the header declares a sample rate of {rate} Hz (accepted: {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz)"
        )))
    }
}

/// `split` keeps at most this many channels apart (a call recording has two; more is a
/// multitrack file, and each channel is a whole transcription).
pub const MAX_SPLIT_CHANNELS: usize = 8;

/// Where decoded audio goes: checked for non-finite values, counted against the length limit,
/// mixed to mono (or kept per channel with `split`) and resampled to 16 kHz as it arrives.
pub(super) struct Sink {
    pub rate: u32,
    split: bool,
    /// One lane for the mono mix, or one per channel once the first packet says how many.
    lanes: Vec<Lane>,
    mixed: Vec<f32>,
    frames_in: u64,
    limit: Option<(u64, f64)>,
}

/// One 16-kHz signal being built.
struct Lane {
    resampler: StreamResampler,
    /// The resampler's latest output; all but its last `CHUNK` samples move on to `store`.
    out: Vec<f32>,
    store: SpillBuffer,
}

impl Lane {
    fn new(rate: u32) -> Result<Self, AudioError> {
        Ok(Self {
            resampler: StreamResampler::new(rate, SAMPLE_RATE)?,
            out: Vec::new(),
            store: SpillBuffer::new(),
        })
    }

    fn push(&mut self, mono: &[f32]) -> Result<(), AudioError> {
        self.resampler.push(mono, &mut self.out)?;
        if self.out.len() >= 4 * CHUNK {
            let ready = self.out.len() - CHUNK;
            self.store.push(&self.out[..ready])?;
            self.out.drain(..ready);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SpillBuffer, AudioError> {
        self.resampler.finish(&mut self.out)?;
        self.store.push(&self.out)?;
        Ok(self.store)
    }
}

impl Sink {
    pub fn new(rate: u32, max_s: Option<f64>, split: bool) -> Result<Self, AudioError> {
        check_rate(rate)?;
        Ok(Self {
            rate,
            split,
            lanes: Vec::new(),
            mixed: Vec::new(),
            frames_in: 0,
            limit: max_s.map(|s| ((s * rate as f64).ceil() as u64, s)),
        })
    }

    /// Frames decoded so far, at the source rate.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// Mix one packet's interleaved frames to mono (or take each channel apart) and pass them on.
    pub fn push_interleaved(
        &mut self,
        interleaved: &[f32],
        channels: usize,
    ) -> Result<(), AudioError> {
        let channels = channels.max(1);
        if let Some(i) = interleaved.iter().position(|x| !x.is_finite()) {
            return Err(AudioError::NonFinite {
                at_s: (self.frames_in + (i / channels) as u64) as f64 / self.rate as f64,
            });
        }
        let lanes = if self.split { channels } else { 1 };
        if self.lanes.is_empty() {
            if lanes > MAX_SPLIT_CHANNELS {
                return Err(AudioError::TooManyChannels {
                    channels,
                    max: MAX_SPLIT_CHANNELS,
                });
            }
            for _ in 0..lanes {
                self.lanes.push(Lane::new(self.rate)?);
            }
        } else if self.lanes.len() != lanes {
            return Err(AudioError::Corrupt(format!(
                "the channel count changes mid-stream ({}, then {channels})",
                self.lanes.len()
            )));
        }
        let frames = interleaved.len() / channels;
        self.frames_in += frames as u64;
        if let Some((max_frames, limit_s)) = self.limit {
            if self.frames_in > max_frames {
                return Err(AudioError::TooLong {
                    duration_s: self.frames_in as f64 / self.rate as f64,
                    limit_s,
                });
            }
        }
        for (c, lane) in self.lanes.iter_mut().enumerate() {
            self.mixed.clear();
            if self.split {
                self.mixed
                    .extend(interleaved.iter().skip(c).step_by(channels).copied());
            } else {
                mix_into(&mut self.mixed, interleaved, channels);
            }
            lane.push(&self.mixed)?;
        }
        Ok(())
    }

    /// Flush the resamplers: the whole signal (or each channel's) at 16 kHz.
    pub fn finish(self) -> Result<Vec<SpillBuffer>, AudioError> {
        self.lanes.into_iter().map(Lane::finish).collect()
    }
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

/// Header fields symphonia trusts (and panics on, for a zero sample rate), checked first: RIFF/WAVE
/// `fmt ` and AIFF/AIFC `COMM`.
fn check_header_fields(b: &[u8]) -> Result<(), AudioError> {
    let bad = |what: String| Err(AudioError::Corrupt(format!("invalid header: {what}")));
    if let Some(fmt) = riff_chunk(b, b"fmt ") {
        if fmt.len() < 16 {
            return bad("the WAV `fmt ` chunk is too short".into());
        }
        let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
        let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
        let block_align = u16::from_le_bytes([fmt[12], fmt[13]]);
        if channels == 0 {
            return bad("the WAV header declares 0 channels".into());
        }
        if block_align == 0 {
            return bad("the WAV header declares a block size of 0".into());
        }
        check_rate(rate)?;
    }
    if let Some(comm) = aiff_comm(b) {
        if comm.len() < 18 {
            return bad("the AIFF `COMM` chunk is too short".into());
        }
        let channels = i16::from_be_bytes([comm[0], comm[1]]);
        let bits = i16::from_be_bytes([comm[6], comm[7]]);
        if channels <= 0 {
            return bad(format!("the AIFF header declares {channels} channels"));
        }
        if !(1..=64).contains(&bits) {
            return bad(format!("the AIFF header declares {bits}-bit samples"));
        }
        let rate = extended_to_f64(&comm[8..18]);
        if !rate.is_finite() {
            return bad("the AIFF header declares a sample rate that is not a number".into());
        }
        // Out-of-range values saturate (negative → 0, huge → u32::MAX) and fail the same check.
        check_rate(rate.round() as u32)?;
    }
    Ok(())
}

/// The body of the first chunk `id` of a RIFF/WAVE file (clipped to the bytes present).
fn riff_chunk<'a>(b: &'a [u8], id: &[u8; 4]) -> Option<&'a [u8]> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12usize;
    while pos.checked_add(8)? <= b.len() {
        let size = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = pos + 8;
        if &b[pos..pos + 4] == id {
            return Some(&b[body..body.saturating_add(size).min(b.len())]);
        }
        pos = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// The body of the `COMM` chunk of an AIFF/AIFC file.
fn aiff_comm(b: &[u8]) -> Option<&[u8]> {
    if b.len() < 12 || &b[0..4] != b"FORM" || !(&b[8..12] == b"AIFF" || &b[8..12] == b"AIFC") {
        return None;
    }
    let mut pos = 12usize;
    while pos.checked_add(8)? <= b.len() {
        let size = u32::from_be_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = pos + 8;
        if &b[pos..pos + 4] == b"COMM" {
            return Some(&b[body..body.saturating_add(size).min(b.len())]);
        }
        pos = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// An IEEE 754 80-bit extended float (AIFF's sample rate), big-endian.
fn extended_to_f64(b: &[u8]) -> f64 {
    let sign = if b[0] & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = (((b[0] & 0x7f) as i32) << 8) | b[1] as i32;
    let mut mantissa = 0u64;
    for &byte in &b[2..10] {
        mantissa = (mantissa << 8) | byte as u64;
    }
    if exponent == 0 && mantissa == 0 {
        return 0.0;
    }
    if exponent == 0x7fff {
        return f64::NAN;
    }
    sign * mantissa as f64 * 2f64.powi(exponent - 16383 - 63)
}

/// The shape of an Ogg file's page sequence, read from the bytes: enough to tell a stream that
/// was cut off (a last page incomplete or without the end-of-stream flag) from a complete one.
struct OggTail {
    last_page_complete: bool,
    last_page_eos: bool,
    pages: usize,
}

impl OggTail {
    fn incomplete(&self) -> Option<String> {
        if !self.last_page_complete {
            Some("the Ogg stream ends inside a page (truncated upload?)".into())
        } else if !self.last_page_eos {
            Some(format!(
                "the Ogg stream stops after {} pages without its end-of-stream page (truncated upload?)",
                self.pages
            ))
        } else {
            None
        }
    }
}

/// Walk an Ogg file's pages. `None` when the bytes are not Ogg or lose page sync (damage that the
/// decoder reports itself).
fn ogg_tail(b: &[u8]) -> Option<OggTail> {
    if !b.starts_with(b"OggS") {
        return None;
    }
    let mut pos = 0usize;
    let mut tail = OggTail {
        last_page_complete: true,
        last_page_eos: false,
        pages: 0,
    };
    while pos < b.len() {
        if b.len() - pos < 27 {
            tail.last_page_complete = false;
            return Some(tail);
        }
        if &b[pos..pos + 4] != b"OggS" {
            return None;
        }
        let flags = b[pos + 5];
        let segments = b[pos + 26] as usize;
        let table = pos + 27;
        if table + segments > b.len() {
            tail.last_page_complete = false;
            return Some(tail);
        }
        let body: usize = b[table..table + segments].iter().map(|&x| x as usize).sum();
        let end = table + segments + body;
        tail.pages += 1;
        tail.last_page_eos = flags & 0x04 != 0;
        if end > b.len() {
            tail.last_page_complete = false;
            return Some(tail);
        }
        pos = end;
    }
    Some(tail)
}

const SUPPORTED_CODECS: &str = "supported: PCM, FLAC, MP3, AAC, Vorbis, Opus, ALAC, ADPCM";

/// The `fmt ` chunk's format tag of a RIFF/WAVE file, to name an unsupported WAV codec.
fn wav_format_tag(b: &[u8]) -> Option<u16> {
    riff_chunk(b, b"fmt ")
        .filter(|f| f.len() >= 2)
        .map(|f| u16::from_le_bytes([f[0], f[1]]))
}

fn wav_codec_name(tag: u16) -> String {
    let name = match tag {
        0x0031 => "GSM 6.10",
        0x0040 | 0x0045 | 0x0064 => "G.721/G.726 ADPCM",
        0x0050 => "MPEG-1 audio",
        0x0055 => "MP3",
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
