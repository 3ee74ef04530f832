//! The one API every front end calls: load a model directory once, then turn audio bytes (or
//! samples) into a `Transcript`. Stateless between calls, so callers may share it across threads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::audio::{self, AudioError, Pcm};
use crate::decode::{
    self, languages, DecodeError, ModelRunner, SuppressTokens, Task, TranscribeOptions,
    WhisperTokenizer,
};
use crate::diarize::Diarizer;
use crate::mel::{MelSpectrogram, N_SAMPLES};
use crate::model::{ModelError, Numerics, Precision, Whisper};
use crate::transcript::{Segment, Transcript};
use crate::vad::{self, SileroVad, SpeechMap, VadOptions};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] decode::tokens::TokenizerError),
    #[error("invalid {param}: {message}")]
    InvalidOption {
        param: &'static str,
        message: String,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Vad(#[from] crate::vad::VadError),
    #[error(transparent)]
    Diarize(#[from] crate::diarize::DiarizeError),
}

impl EngineError {
    /// Whether the caller's input (audio or options) is at fault, as opposed to the service.
    pub fn is_client_error(&self) -> bool {
        match self {
            EngineError::Audio(AudioError::Internal(_) | AudioError::Spill(_)) => false,
            EngineError::Audio(_) | EngineError::InvalidOption { .. } => true,
            _ => false,
        }
    }
}

/// Most keywords a request may give, and most characters in all.
pub const MAX_KEYWORDS: usize = 100;
pub const MAX_KEYWORD_CHARS: usize = 1000;

/// Transcription options checked and normalised against one engine's model
/// ([`Engine::check_options`]): the form the entry points below a front end take, so that a
/// request's options are validated once, where it arrives. Read through `Deref`.
#[derive(Debug, Clone)]
pub struct CheckedOptions(TranscribeOptions);

impl std::ops::Deref for CheckedOptions {
    type Target = TranscribeOptions;
    fn deref(&self) -> &TranscribeOptions {
        &self.0
    }
}

pub struct Engine {
    pub model: std::sync::Arc<Whisper>,
    pub tokenizer: WhisperTokenizer,
    pub suppress: SuppressTokens,
    mel: MelSpectrogram,
    pub model_dir: PathBuf,
    /// A short name for the model (its directory name), as `/v1/models` lists it.
    pub model_name: String,
    pub load_seconds: f64,
    /// Silero VAD, when its model file was found (`vad_model_candidates`) or given.
    pub vad: Option<std::sync::Arc<SileroVad>>,
    /// The speaker encoder for diarization, when its model file was found
    /// (`diarizer_model_candidates`) or given.
    pub diarizer: Option<std::sync::Arc<Diarizer>>,
}

/// Where the speaker model (`make model-ge2e`) is looked for: beside the Whisper model's
/// directory, then in `models/ge2e/` under the working directory.
pub fn diarizer_model_candidates(model_dir: &Path) -> Vec<PathBuf> {
    let rel = Path::new(crate::diarize::MODEL_DIR).join(crate::diarize::MODEL_FILE);
    let mut c = Vec::new();
    if let Some(parent) = model_dir.parent() {
        c.push(parent.join(&rel));
    }
    c.push(Path::new("models").join(rel));
    c
}

/// The speaker model found among `diarizer_model_candidates`; `None` (logged) when there is none.
pub fn find_diarizer(model_dir: &Path) -> Result<Option<std::sync::Arc<Diarizer>>, EngineError> {
    match diarizer_model_candidates(model_dir)
        .into_iter()
        .find(|p| p.is_file())
    {
        Some(p) => {
            let d = Diarizer::load(&p).map_err(crate::diarize::DiarizeError::from)?;
            tracing::info!(speaker_model = %p.display(), "speaker model loaded: diarization available");
            Ok(Some(std::sync::Arc::new(d)))
        }
        None => {
            tracing::info!(looked_in = ?diarizer_model_candidates(model_dir), "no speaker model found: diarization unavailable (run `make model-ge2e`)");
            Ok(None)
        }
    }
}

/// Where the VAD model is looked for when none is configured: beside the Whisper model's
/// directory (where `make model` puts it), inside it, then in `models/silero-vad/` under the
/// working directory (`make model`'s place when the Whisper model lives elsewhere).
pub fn vad_model_candidates(model_dir: &Path) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(parent) = model_dir.parent() {
        c.push(parent.join(vad::MODEL_DIR).join(vad::MODEL_FILE));
    }
    c.push(model_dir.join(vad::MODEL_FILE));
    c.push(
        Path::new("models")
            .join(vad::MODEL_DIR)
            .join(vad::MODEL_FILE),
    );
    c
}

impl Engine {
    /// Load on the CPU.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Load onto `device` (see `select_device`) in f32.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self, EngineError> {
        Self::load_with(dir, device, Precision::F32)
    }

    /// Load onto `device` with the decoder in `precision` (q8: Q8_0 weights quantized at load).
    pub fn load_with(
        dir: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let vad = match vad_model_candidates(dir).into_iter().find(|p| p.is_file()) {
            Some(p) => Some(std::sync::Arc::new(SileroVad::load(&p)?)),
            None => {
                tracing::info!(looked_in = ?vad_model_candidates(dir), "no Silero VAD model found: VAD unavailable (run `make model`), the energy gate still runs");
                None
            }
        };
        let mut engine = Self::load_with_vad(dir, device, precision, vad)?;
        engine.diarizer = find_diarizer(dir)?;
        Ok(engine)
    }

    /// [`Engine::load_with`] with the VAD model given (one the caller already holds, or none)
    /// instead of looked for beside the model.
    pub fn load_with_vad(
        dir: &Path,
        device: &Device,
        precision: Precision,
        vad: Option<std::sync::Arc<SileroVad>>,
    ) -> Result<Self, EngineError> {
        let numerics = Numerics::choose(precision, device)?;
        Self::load_numerics(dir, device, numerics, vad)
    }

    /// [`Engine::load_with_vad`] with the model's numerics given (see
    /// [`Numerics::with_decoder`]; the tests run the device decoder on the CPU this way).
    pub fn load_numerics(
        dir: &Path,
        device: &Device,
        numerics: Numerics,
        vad: Option<std::sync::Arc<SileroVad>>,
    ) -> Result<Self, EngineError> {
        let precision = numerics.precision;
        let t0 = Instant::now();
        // The tokenizer (~60 ms of JSON for base) is read beside the weights.
        let load_tokenizer = || -> Result<_, EngineError> {
            let tok_path = dir.join("tokenizer.json");
            if !tok_path.exists() {
                return Err(ModelError::MissingFile {
                    path: tok_path,
                    what: "tokenizer.json",
                }
                .into());
            }
            let tokenizer = WhisperTokenizer::load(&tok_path)?;
            let suppress = load_suppress_tokens(dir, &tokenizer)?;
            Ok((tokenizer, suppress))
        };
        let (model, tok) = std::thread::scope(|s| {
            let tok = s.spawn(load_tokenizer);
            let model = Whisper::load_with(dir, device, numerics);
            (model, tok.join())
        });
        let model = model?;
        let (tokenizer, suppress) = match tok {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let model_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "whisper".into());
        let load_seconds = t0.elapsed().as_secs_f64();
        tracing::info!(model = %dir.display(), ?precision, layout = ?model.layout, dims = ?model.dims, vad = vad.is_some(), load_seconds, "model loaded");
        Ok(Self {
            mel: MelSpectrogram::new(model.dims.n_mels),
            model: model.into(),
            tokenizer,
            suppress,
            model_dir: dir.to_path_buf(),
            model_name,
            load_seconds,
            vad,
            diarizer: None,
        })
    }

    /// Use the Silero VAD model at `path` (instead of the one found beside the Whisper model).
    pub fn load_vad(&mut self, path: &Path) -> Result<(), EngineError> {
        self.vad = Some(std::sync::Arc::new(SileroVad::load(path)?));
        tracing::info!(vad_model = %path.display(), "VAD model loaded");
        Ok(())
    }

    pub fn is_multilingual(&self) -> bool {
        self.model.dims.is_multilingual()
    }

    /// Check and normalise options against this model: a known language, translate only where the
    /// model can. An English-only model asked to translate transcribes (English out either way).
    /// Front ends call this once, where a request arrives; the entry points that take
    /// [`CheckedOptions`] check nothing again.
    pub fn check_options(&self, o: &TranscribeOptions) -> Result<CheckedOptions, EngineError> {
        let mut o = o.clone();
        if let Some(lang) = o.language.as_deref().filter(|l| !l.trim().is_empty()) {
            let code = languages::normalize(lang).ok_or_else(|| EngineError::InvalidOption {
                param: "language",
                message: format!("unknown language `{lang}`"),
            })?;
            if !self.is_multilingual() && code != "en" {
                return Err(EngineError::InvalidOption {
                    param: "language",
                    message: format!(
                        "model {} is English-only; language `{code}` needs a multilingual model",
                        self.model_name
                    ),
                });
            }
            if self.is_multilingual() && self.tokenizer.language_token(code).is_none() {
                return Err(EngineError::InvalidOption {
                    param: "language",
                    message: format!("language `{code}` is not in this model's vocabulary"),
                });
            }
            o.language = Some(code.to_string());
        } else {
            o.language = None;
        }
        let mut languages = Vec::with_capacity(o.languages.len());
        for l in o
            .languages
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
        {
            let code = languages::normalize(l)
                .filter(|c| self.tokenizer.language_token(c).is_some() || *c == "en")
                .ok_or_else(|| EngineError::InvalidOption {
                    param: "languages",
                    message: format!(
                        "unknown language `{l}` (expected ISO-639-1 codes such as en, de)"
                    ),
                })?;
            if !languages.iter().any(|x| x == code) {
                languages.push(code.to_string());
            }
        }
        if !self.is_multilingual() && !languages.is_empty() && !languages.iter().any(|l| l == "en")
        {
            return Err(EngineError::InvalidOption {
                param: "languages",
                message: format!(
                    "model {} is English-only; languages must include en",
                    self.model_name
                ),
            });
        }
        // One possible language is the language.
        if o.language.is_none() && languages.len() == 1 {
            o.language = languages.first().cloned();
        }
        o.languages = languages;
        let keyword_chars: usize = o.keywords.iter().map(|k| k.chars().count()).sum();
        if o.keywords.len() > MAX_KEYWORDS || keyword_chars > MAX_KEYWORD_CHARS {
            return Err(EngineError::InvalidOption {
                param: "keywords",
                message: format!("at most {MAX_KEYWORDS} keywords of {MAX_KEYWORD_CHARS} characters in all (the prompt holds 223 tokens)"),
            });
        }
        o.keywords = o
            .keywords
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if o.task == Task::Translate && !self.is_multilingual() {
            tracing::warn!(model = %self.model_name, "translate requested on an English-only model: transcribing instead");
            o.task = Task::Transcribe;
        }
        o.check_fallback()
            .map_err(|(param, message)| EngineError::InvalidOption { param, message })?;
        self.check_vad(&o.vad)?;
        if o.diarize.is_some() && o.channels == crate::audio::Channels::Split {
            return Err(EngineError::InvalidOption {
                param: "channels",
                message: "channels=split labels speakers by channel; it does not combine with diarize or speaker counts".into(),
            });
        }
        if let Some(d) = &o.diarize {
            d.check()
                .map_err(|(param, message)| EngineError::InvalidOption { param, message })?;
            if self.diarizer.is_none() {
                return Err(EngineError::InvalidOption {
                    param: "diarize",
                    message: "this server has no speaker model (ge2e.safetensors; `make model-ge2e` fetches it)".into(),
                });
            }
        }
        Ok(CheckedOptions(o))
    }

    fn check_vad(&self, v: &VadOptions) -> Result<(), EngineError> {
        v.check()
            .map_err(|(param, message)| EngineError::InvalidOption { param, message })?;
        if v.enabled && self.vad.is_none() {
            return Err(EngineError::InvalidOption {
                param: "vad",
                message:
                    "this server has no VAD model (silero_vad_v6.onnx; `make model` fetches it)"
                        .into(),
            });
        }
        Ok(())
    }

    /// Decode and resample uploaded bytes (the CPU work that can run outside the model worker).
    pub fn load_audio(bytes: Vec<u8>) -> Result<Pcm, EngineError> {
        Self::load_audio_within(bytes, None)
    }

    /// As `load_audio`, refusing audio longer than `max_s` seconds without decoding past it.
    pub fn load_audio_within(bytes: Vec<u8>, max_s: Option<f64>) -> Result<Pcm, EngineError> {
        Ok(audio::load_pcm(bytes, max_s)?)
    }

    /// Decode, prepare and transcribe uploaded bytes, `o` checked once.
    pub fn transcribe_bytes(
        &self,
        bytes: Vec<u8>,
        o: &TranscribeOptions,
    ) -> Result<Transcript, EngineError> {
        let o = self.check_options(o)?;
        let prepared = self.prepare_bytes(bytes, None, &o)?;
        self.transcribe_streaming(&*self.model, &prepared, &o, &mut |_| {})
    }

    /// Decode uploaded bytes (refusing audio longer than `max_s`) and prepare them as `o` asks:
    /// the mono mix, or with `channels=split` each channel alone. The samples are dropped once
    /// the log-mel exists.
    pub fn prepare_bytes(
        &self,
        bytes: Vec<u8>,
        max_s: Option<f64>,
        o: &CheckedOptions,
    ) -> Result<Prepared, EngineError> {
        let split = o.channels == crate::audio::Channels::Split && !o.language_detection_only;
        let decode = tracing::info_span!("decode", bytes = bytes.len() as i64, split);
        if !split {
            let pcm = decode.in_scope(|| Self::load_audio_within(bytes, max_s))?;
            return tracing::info_span!("mel", audio_s = pcm.duration_s())
                .in_scope(|| self.prepare_for(&pcm, o));
        }
        let channels = decode.in_scope(|| audio::load_channels(bytes, max_s))?;
        tracing::info!(channels = channels.len(), "channels split");
        // Each channel's samples are dropped once its log-mel exists.
        let mut parts = channels.into_iter().map(|pcm| {
            tracing::info_span!("mel", audio_s = pcm.duration_s())
                .in_scope(|| self.prepare_checked(&pcm, &o.vad))
        });
        let mut first = parts.next().ok_or(AudioError::NoSamples)??;
        first.more_channels = parts.collect::<Result<_, _>>()?;
        first.split = true;
        Ok(first)
    }

    /// Prepare and transcribe decoded audio, `o` checked once.
    pub fn transcribe_pcm(
        &self,
        pcm: &Pcm,
        o: &TranscribeOptions,
    ) -> Result<Transcript, EngineError> {
        let o = self.check_options(o)?;
        let prepared = self.prepare_for(pcm, &o)?;
        self.transcribe_streaming(&*self.model, &prepared, &o, &mut |_| {})
    }

    /// [`prepare`](Self::prepare) with everything `o` asks for before decoding: with
    /// `o.diarize`, the speaker features are computed here and the embedding and clustering
    /// start on a thread of their own, so they run while the recording is transcribed.
    pub fn prepare_for(&self, pcm: &Pcm, o: &CheckedOptions) -> Result<Prepared, EngineError> {
        let mut p = self.prepare_checked(pcm, &o.vad)?;
        if let (Some(opts), false) = (o.diarize.clone(), o.language_detection_only) {
            // `check_options` refused diarization without a speaker model.
            let diarizer = self.diarizer.clone().ok_or(EngineError::InvalidOption {
                param: "diarize",
                message: "this server has no speaker model (`make model-ge2e` fetches it)".into(),
            })?;
            let features = tracing::info_span!("speaker_features")
                .in_scope(|| diarizer.features(&pcm.samples, self.vad.as_deref()))?;
            p.diarization = Some(crate::diarize::Diarizing::start(diarizer, features, opts)?);
        }
        Ok(p)
    }

    /// Speech detection and the log-mel of what is kept: CPU work that does not need the Whisper
    /// model, so front ends run it outside the inference worker.
    pub fn prepare(&self, pcm: &Pcm, v: &VadOptions) -> Result<Prepared, EngineError> {
        self.check_vad(v)?;
        self.prepare_checked(pcm, v)
    }

    /// [`prepare`](Self::prepare) with `v` already checked.
    fn prepare_checked(&self, pcm: &Pcm, v: &VadOptions) -> Result<Prepared, EngineError> {
        let t0 = Instant::now();
        let speech = vad::analyze(&pcm.samples, v, self.vad.as_deref())?;
        let vad_seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            vad = speech.vad,
            speech_s = speech.speech_seconds(),
            skipped_s = speech.skipped_seconds(),
            regions = speech.regions.len(),
            vad_seconds,
            "speech detected"
        );
        tracing::debug!(regions = ?speech.regions, "speech regions (samples)");
        // OpenAI pads 30 s of zeros before the STFT; frames past the audio are zeros in the log domain.
        let mel = self
            .mel
            .compute_from(&speech.join(&pcm.samples), N_SAMPLES)
            .map_err(AudioError::from)?;
        let chunk_ends = speech
            .chunk_ends(N_SAMPLES)
            .into_iter()
            .map(|e| e / crate::mel::HOP_LENGTH)
            .collect();
        Ok(Prepared {
            mel,
            chunk_ends,
            content_frames: speech.kept_samples() / crate::mel::HOP_LENGTH,
            duration_s: pcm.duration_s(),
            speech,
            diarization: None,
            split: false,
            more_channels: Vec::new(),
        })
    }

    pub fn transcribe_prepared(
        &self,
        p: &Prepared,
        o: &CheckedOptions,
    ) -> Result<Transcript, EngineError> {
        self.transcribe_prepared_with(&*self.model, p, o)
    }

    /// Like [`transcribe_prepared`](Self::transcribe_prepared), with the network calls going
    /// through `runner` (the scheduler's handle batches them with other requests).
    pub fn transcribe_prepared_with(
        &self,
        runner: &dyn ModelRunner,
        p: &Prepared,
        o: &CheckedOptions,
    ) -> Result<Transcript, EngineError> {
        self.transcribe_streaming(runner, p, o, &mut |_| {})
    }

    /// Like [`transcribe_prepared_with`](Self::transcribe_prepared_with), handing each finished
    /// segment (on the recording's timeline) to `on_segment` while later windows still decode.
    pub fn transcribe_streaming(
        &self,
        runner: &dyn ModelRunner,
        p: &Prepared,
        o: &CheckedOptions,
        on_segment: &mut dyn FnMut(&Segment),
    ) -> Result<Transcript, EngineError> {
        if o.language_detection_only {
            return self.detect_language_prepared(runner, p, o);
        }
        if p.split {
            return self.transcribe_channels(runner, p, o, on_segment);
        }
        self.transcribe_checked(runner, p, o, on_segment)
    }

    /// `channels=split`: each channel transcribed alone, its segments (and words) labelled
    /// `CHANNEL_<n>`, all merged on one timeline. Segments reach `on_segment` once every channel
    /// is done, in time order.
    fn transcribe_channels(
        &self,
        runner: &dyn ModelRunner,
        p: &Prepared,
        o: &TranscribeOptions,
        on_segment: &mut dyn FnMut(&Segment),
    ) -> Result<Transcript, EngineError> {
        let parts = std::iter::once(p).chain(&p.more_channels);
        let mut done = Vec::with_capacity(1 + p.more_channels.len());
        for (c, part) in parts.enumerate() {
            let _g = tracing::info_span!("channel", channel = c).entered();
            done.push(self.transcribe_checked(runner, part, o, &mut |_| {})?);
        }
        let t = crate::transcript::merge_channels(done);
        for s in &t.segments {
            on_segment(s);
        }
        Ok(t)
    }

    /// [`transcribe_streaming`](Self::transcribe_streaming) of one signal, `o` already checked.
    fn transcribe_checked(
        &self,
        runner: &dyn ModelRunner,
        p: &Prepared,
        o: &TranscribeOptions,
        on_segment: &mut dyn FnMut(&Segment),
    ) -> Result<Transcript, EngineError> {
        let span = tracing::info_span!("transcribe", audio_s = p.duration_s);
        let _g = span.enter();
        let t0 = Instant::now();
        let mut t = decode::transcribe(
            runner,
            &self.tokenizer,
            &self.suppress,
            &p.mel,
            decode::Content {
                frames: p.content_frames,
                chunk_ends: &p.chunk_ends,
                speech_only: p.speech.vad,
            },
            o,
            &mut |s| {
                if p.speech.is_whole() {
                    on_segment(s);
                } else {
                    let mut s = s.clone();
                    p.speech.map_segment(&mut s);
                    on_segment(&s);
                }
            },
        )?;
        if !p.speech.is_whole() {
            for s in &mut t.segments {
                p.speech.map_segment(s);
            }
        }
        t.duration = p.duration_s;
        t.speech = Some(crate::transcript::SpeechStats {
            vad: p.speech.vad,
            speech_duration: p.speech.speech_seconds(),
            skipped_duration: p.speech.skipped_seconds(),
        });
        if let Some(d) = &p.diarization {
            let waited = Instant::now();
            let d = d.wait()?;
            crate::diarize::assign(&mut t, &d);
            tracing::info!(
                speakers = d.speakers,
                windows = d.windows,
                diarize_seconds = d.seconds,
                waited_s = waited.elapsed().as_secs_f64(),
                "diarized"
            );
            t.diarized = Some(crate::diarize::DiarizeRun {
                seconds: d.seconds,
                windows: d.windows,
                speakers: d.speakers,
            });
        }
        let secs = t0.elapsed().as_secs_f64();
        tracing::debug!(
            seconds = secs,
            rtf = secs / p.duration_s.max(1e-9),
            segments = t.segments.len(),
            "transcribed"
        );
        Ok(t)
    }
}

impl Engine {
    /// Language identification from the first 30-s window of the kept audio, among
    /// `o.languages` (all the model's languages when empty). An English-only model answers
    /// English with certainty.
    fn detect_language_prepared(
        &self,
        runner: &dyn ModelRunner,
        p: &Prepared,
        o: &TranscribeOptions,
    ) -> Result<Transcript, EngineError> {
        let _g = tracing::info_span!("detect_language", audio_s = p.duration_s).entered();
        let probs: Vec<(String, f32)> = if !self.is_multilingual() {
            vec![("en".to_string(), 1.0)]
        } else if p.content_frames == 0 {
            Vec::new()
        } else {
            let mel = candle_core::Tensor::from_vec(
                p.mel
                    .window(0, p.content_frames)
                    .map_err(AudioError::from)?,
                (1, p.mel.n_mels, crate::mel::N_FRAMES),
                &self.model.device,
            )
            .map_err(DecodeError::from)?;
            let features = runner.encode(mel)?;
            decode::language_probabilities(runner, &self.tokenizer, &features, &o.languages)?
                .into_iter()
                .map(|(c, p)| (c.to_string(), p))
                .collect()
        };
        let language = probs
            .first()
            .map_or_else(|| "en".to_string(), |(c, _)| c.clone());
        tracing::info!(language = %language, probability = probs.first().map_or(0.0, |p| p.1), "language identified");
        Ok(Transcript {
            text: String::new(),
            language,
            duration: p.duration_s,
            segments: Vec::new(),
            fallbacks: Vec::new(),
            speech: Some(crate::transcript::SpeechStats {
                vad: p.speech.vad,
                speech_duration: p.speech.speech_seconds(),
                skipped_duration: p.speech.skipped_seconds(),
            }),
            language_probabilities: Some(
                probs
                    .into_iter()
                    .map(
                        |(language, probability)| crate::transcript::LanguageProbability {
                            language,
                            probability,
                        },
                    )
                    .collect(),
            ),
            speakers: None,
            diarized: None,
        })
    }
}

/// A recording ready for the model: the log-mel of its kept audio, and where that audio was.
pub struct Prepared {
    pub mel: crate::mel::Mel,
    pub content_frames: usize,
    /// Where decoding windows must stop: the ends of the speech chunks, in frames.
    pub chunk_ends: Vec<usize>,
    pub duration_s: f64,
    pub speech: SpeechMap,
    /// Diarization running beside the transcription (`TranscribeOptions::diarize`).
    pub diarization: Option<crate::diarize::Diarizing>,
    /// `channels=split`: this is channel 0, prepared alone, and `more_channels` the others.
    pub split: bool,
    pub more_channels: Vec<Prepared>,
}

impl Prepared {
    pub fn duration_s(&self) -> f64 {
        self.duration_s
    }
}

/// Where the model runs, as configured: `cpu`, `cuda` / `cuda:N`, or `auto` (the first GPU when
/// the build has CUDA and one is present). One type for the CLI, the config file and `/info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Auto,
    /// The GPU with this ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let s = spec.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{spec}` (expected cpu, cuda, cuda:N or auto)")
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// The device `spec` names, or why it cannot be had in this build or on this machine.
pub fn select_device(spec: DeviceSpec) -> Result<Device, EngineError> {
    let bad = |message: String| EngineError::InvalidOption {
        param: "device",
        message,
    };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        DeviceSpec::Cuda(ordinal) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(format!(
                    "`{spec}`: this build has no CUDA support (build with `make build-cuda`)"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(format!("`{spec}`: {e}")))
        }
    }
}

/// Tokens to suppress: CTranslate2's `config.json` (`suppress_ids`, `suppress_ids_begin`), Hugging
/// Face's `generation_config.json` (`suppress_tokens`, `begin_suppress_tokens`), or, failing both,
/// computed from the tokenizer as OpenAI does.
fn load_suppress_tokens(dir: &Path, tok: &WhisperTokenizer) -> Result<SuppressTokens, EngineError> {
    let read = |name: &str| -> Option<serde_json::Value> {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let ids = |v: &serde_json::Value, key: &str| -> Option<Vec<u32>> {
        v.get(key)?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().map(|n| n as u32))
            .collect()
    };
    let sp = &tok.specials;
    let default_begin = {
        let mut b = tok.encode(" ")?;
        b.push(sp.eot);
        b
    };
    if let Some(cfg) = read("config.json") {
        if let Some(always) = ids(&cfg, "suppress_ids") {
            let at_begin = ids(&cfg, "suppress_ids_begin").unwrap_or(default_begin);
            return Ok(SuppressTokens { always, at_begin });
        }
    }
    if let Some(gen) = read("generation_config.json") {
        if let Some(always) = ids(&gen, "suppress_tokens") {
            let at_begin = ids(&gen, "begin_suppress_tokens").unwrap_or(default_begin);
            return Ok(SuppressTokens { always, at_begin });
        }
    }
    computed_suppress_tokens(tok)
}

/// OpenAI's default suppress list (`suppress_tokens="-1"`): non-speech symbols plus control tokens.
pub fn computed_suppress_tokens(tok: &WhisperTokenizer) -> Result<SuppressTokens, EngineError> {
    let sp = &tok.specials;
    let mut always = tok.non_speech_tokens();
    always.extend([
        sp.transcribe,
        sp.translate,
        sp.sot,
        sp.sot_prev,
        sp.sot_lm,
        sp.no_speech,
    ]);
    always.sort_unstable();
    always.dedup();
    let mut at_begin = tok.encode(" ")?;
    at_begin.push(sp.eot);
    Ok(SuppressTokens { always, at_begin })
}

/// Write the suppress lists and the alignment heads as Hugging Face's `generation_config.json`
/// (used by `convert`).
pub fn write_generation_config(
    s: &SuppressTokens,
    alignment_heads: &[(usize, usize)],
    dst: &Path,
) -> std::io::Result<()> {
    let heads: Vec<[usize; 2]> = alignment_heads.iter().map(|&(l, h)| [l, h]).collect();
    let v = serde_json::json!({
        "suppress_tokens": s.always,
        "begin_suppress_tokens": s.at_begin,
        "alignment_heads": heads,
    });
    std::fs::write(
        dst.join("generation_config.json"),
        serde_json::to_string_pretty(&v)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print_one_way() {
        for (text, spec, shown) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            (" Auto ", DeviceSpec::Auto, "auto"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("CUDA:3", DeviceSpec::Cuda(3), "cuda:3"),
        ] {
            let parsed: DeviceSpec = text.parse().unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(shown.parse::<DeviceSpec>().unwrap(), spec);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("expected cpu, cuda, cuda:N or auto"), "{e}");
        }
        assert!(matches!(select_device(DeviceSpec::Cpu), Ok(Device::Cpu)));
    }
}
