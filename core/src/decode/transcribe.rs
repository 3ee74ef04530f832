//! OpenAI's sequential long-form algorithm (`transcribe.py`): decode a 30-s window, cut it into
//! segments at timestamp pairs, seek to the last complete timestamp (not a fixed 30 s), feed the
//! text so far as the next prompt, skip windows that are silence.

use candle_core::Tensor;

use super::filters::{log_softmax, SuppressTokens};
use super::runner::{ModelRunner, SequenceGuard};
use super::timing;
use super::tokens::{WhisperTokenizer, TIME_PRECISION};
use super::window::{
    decode_window, new_rng, FallbackRules, WindowFallback, WindowOptions, WindowResult,
};
use super::{DecodeError, TranscribeOptions};
use crate::mel::{Mel, HOP_LENGTH, N_FRAMES};
use crate::model::DecoderState;
use crate::transcript::{Segment, Transcript};

/// Mel frames per timestamp step (3000 frames / 1500 encoder positions).
const INPUT_STRIDE: usize = 2;
/// Mel frames per second.
const FRAMES_PER_SECOND: f64 = 16_000.0 / HOP_LENGTH as f64;
/// Speech left in a window after the point where the model ended it for the window not to be
/// given up (see [`early_end_resume`]), in mel frames: 3 s. Inside a chunk of VAD speech a silence
/// lasts at most `min_silence_duration_ms` (2 s by default) plus padding, so 3 s of joined audio
/// always hold speech.
const EARLY_END_RESUME_FRAMES: usize = 300;

/// What of a log-mel holds audio to decode.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// Frames that hold audio (the rest is the 30 s of zero padding).
    pub frames: usize,
    /// No window crosses one of these (frames; empty: windows run on to `frames`).
    pub chunk_ends: &'a [usize],
    /// The audio is speech as voice activity detection found it, joined: no long silence is left.
    pub speech_only: bool,
}

/// Where the next window starts when the model ended this one at `end` (frames from its start,
/// its last timestamp) while `size` frames of it hold audio. OpenAI's loop trusts such an ending
/// and moves on by the whole window; small models sometimes end a window after its first
/// sentence with twenty more seconds of speech in it, which are then never transcribed. When the
/// audio is VAD speech, what follows `end` is speech, so decoding resumes at `end` (as after a
/// complete timestamp pair) unless less than [`EARLY_END_RESUME_FRAMES`] remain.
fn early_end_resume(c: &Content, end: usize, size: usize) -> Option<usize> {
    (c.speech_only && end > 0 && size.saturating_sub(end) >= EARLY_END_RESUME_FRAMES).then_some(end)
}

fn window_tensor(
    runner: &dyn ModelRunner,
    mel: &Mel,
    window: &[f32],
) -> candle_core::Result<Tensor> {
    Tensor::from_slice(window, (1, mel.n_mels, N_FRAMES), runner.device())
}

/// Most likely language (code, probability) from a window's audio features `(1, 1500, d)`,
/// among `allowed` codes (all of the model's languages when empty).
pub fn detect_language(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    features: &Tensor,
    allowed: &[String],
) -> Result<(&'static str, f32), DecodeError> {
    Ok(language_probabilities(runner, tok, features, allowed)?
        .first()
        .copied()
        .unwrap_or(("en", 0.0)))
}

/// Every candidate language with its probability, most likely first: a softmax over the language
/// tokens' logits at the start of a window, over `allowed` codes only (all when empty).
pub fn language_probabilities(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    features: &Tensor,
    allowed: &[String],
) -> Result<Vec<(&'static str, f32)>, DecodeError> {
    let mut state = runner.prepare(features)?;
    language_probabilities_in(runner, tok, &mut state, allowed)
}

/// As [`language_probabilities`], over a window's prepared decoding state (its audio keys and
/// values computed once for detection and decoding alike); the state's tokens are reset.
fn language_probabilities_in(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    state: &mut DecoderState,
    allowed: &[String],
) -> Result<Vec<(&'static str, f32)>, DecodeError> {
    state.reset();
    let logits = runner
        .prefill(state, &[tok.specials.sot], &[0])?
        .pop()
        .unwrap_or_default();
    drop(SequenceGuard(runner));
    let langs: Vec<(&'static str, u32)> = tok
        .languages()
        .iter()
        .filter(|(c, _)| allowed.is_empty() || allowed.iter().any(|a| a == c))
        .copied()
        .collect();
    let lang_logits: Vec<f32> = langs
        .iter()
        .map(|(_, t)| {
            logits
                .get(*t as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
        })
        .collect();
    let probs = log_softmax(&lang_logits);
    let mut out: Vec<(&'static str, f32)> = langs
        .iter()
        .zip(probs)
        .map(|((c, _), lp)| (*c, lp.exp()))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}

/// Transcribe a whole log-mel (computed with 30 s of zero padding at the end, as OpenAI does),
/// the part of it that `content` says holds audio. `on_segment` sees each segment as soon as its
/// window is decoded (streaming).
#[allow(clippy::too_many_arguments)]
pub fn transcribe(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    suppress_tokens: &SuppressTokens,
    mel: &Mel,
    content: Content,
    o: &TranscribeOptions,
    on_segment: &mut dyn FnMut(&Segment),
) -> Result<Transcript, DecodeError> {
    let (content_frames, chunk_ends) = (content.frames, content.chunk_ends);
    let dims = runner.dims();
    let sp = tok.specials.clone();
    let multilingual = dims.is_multilingual();
    let duration = content_frames as f64 * HOP_LENGTH as f64 / 16_000.0;
    let rules = FallbackRules {
        compression_ratio_threshold: o.compression_ratio_threshold,
        logprob_threshold: o.logprob_threshold,
        no_speech_threshold: o.no_speech_threshold,
        best_of: o.best_of,
        beam: o.beam,
    };
    let mut rng = new_rng();

    let initial_prompt: Vec<u32> = match o.initial_prompt.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => tok.encode(&format!(" {p}"))?,
        _ => Vec::new(),
    };
    // Keywords (OpenAI's `keywords[]`, faster-whisper's hotwords) lead every window's prompt.
    let keywords: Vec<u32> = if o.keywords.is_empty() {
        Vec::new()
    } else {
        tok.encode(&format!(" {}", o.keywords.join(", ")))?
    };
    let mut all_tokens: Vec<u32> = initial_prompt.clone();
    let mut prompt_reset_since = 0usize;
    let mut segments: Vec<Segment> = Vec::new();
    let mut fallbacks: Vec<WindowFallback> = Vec::new();
    let mut language: Option<String> = if multilingual {
        o.language.clone()
    } else {
        Some("en".into())
    };

    let mut seek = 0usize;
    // End of the last word placed so far (word timestamps' edge heuristics).
    let mut last_speech = 0f64;
    while seek < content_frames {
        let _span = tracing::debug_span!("window", seek).entered();
        let window_seek = seek;
        let time_offset = seek as f64 * HOP_LENGTH as f64 / 16_000.0;
        // A window stops at the end of its chunk of speech regions (see `SpeechMap::chunk_ends`).
        let chunk_end = chunk_ends
            .iter()
            .copied()
            .find(|&e| e > seek)
            .map_or(content_frames, |e| e.min(content_frames));
        let segment_size = N_FRAMES.min(chunk_end - seek);
        let segment_duration = segment_size as f64 * HOP_LENGTH as f64 / 16_000.0;
        let mel_window = mel.window(seek, segment_size)?;
        let features = tracing::debug_span!("encoder", frames = segment_size as i64)
            .in_scope(|| runner.encode(window_tensor(runner, mel, &mel_window)?))?;
        // Every decoder step of this window (and its fallback attempts) in one span, not one per token.
        let decoder_span = tracing::debug_span!(
            "decoder",
            tokens = tracing::field::Empty,
            temperature = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        // The window's audio keys and values, computed once: language detection (first window
        // only) and decoding both read them.
        let mut state = decoder_span.in_scope(|| runner.prepare(&features))?;
        drop(features);
        if language.is_none() {
            let (code, p) = language_probabilities_in(runner, tok, &mut state, &o.languages)?
                .first()
                .copied()
                .unwrap_or(("en", 0.0));
            tracing::info!(language = code, probability = p, "detected language");
            language = Some(code.to_string());
        }
        let language_token = if multilingual {
            language.as_deref().and_then(|l| tok.language_token(l))
        } else {
            None
        };
        let wo = WindowOptions {
            language_token,
            task: o.task,
            timestamps: o.timestamps,
            prompt: all_tokens[prompt_reset_since..].to_vec(),
            keywords: keywords.clone(),
            text_probs: o.word_timestamps,
        };
        let chosen = decoder_span.in_scope(|| {
            decode_window(
                runner,
                tok,
                suppress_tokens,
                &mut state,
                &wo,
                &o.temperatures,
                rules,
                &mut rng,
            )
        })?;
        let r = chosen.result;
        decoder_span.record("tokens", r.tokens.len() as i64);
        decoder_span.record("temperature", f64::from(r.temperature));
        decoder_span.record("outcome", chosen.outcome.as_str());
        fallbacks.push(WindowFallback {
            outcome: chosen.outcome,
            temperature: r.temperature,
            resumed_early_end: false,
        });

        // A window that is silence: no_speech_prob high and the text unlikely.
        if let Some(th) = o.no_speech_threshold {
            let unlikely = o.logprob_threshold.is_none_or(|lt| r.avg_logprob <= lt);
            if r.no_speech_prob > th && unlikely {
                tracing::debug!(
                    no_speech_prob = r.no_speech_prob,
                    "window skipped as silence"
                );
                seek += segment_size;
                continue;
            }
        }

        let mut current: Vec<Segment> = Vec::new();
        let tokens = &r.tokens;
        let is_ts: Vec<bool> = tokens.iter().map(|&t| t >= sp.timestamp_begin).collect();
        let single_timestamp_ending =
            is_ts.len() >= 2 && !is_ts[is_ts.len() - 2] && is_ts[is_ts.len() - 1];
        let ts_pos = |t: u32| (t - sp.timestamp_begin) as f64;
        // Where the model ended the window early and decoding resumes (the window's last token is
        // then the timestamp it ended at).
        let resumed = match tokens.last() {
            Some(&last) if single_timestamp_ending => {
                early_end_resume(&content, ts_pos(last) as usize * INPUT_STRIDE, segment_size)
            }
            _ => None,
        };
        let consecutive: Vec<usize> = (1..is_ts.len())
            .filter(|&i| is_ts[i - 1] && is_ts[i])
            .collect();
        if !consecutive.is_empty() {
            let mut slices = consecutive.clone();
            if single_timestamp_ending {
                slices.push(tokens.len());
            }
            let mut last_slice = 0usize;
            for &cur in &slices {
                let sliced = &tokens[last_slice..cur];
                let start = time_offset + ts_pos(sliced[0]) * TIME_PRECISION;
                let end = time_offset + ts_pos(sliced[sliced.len() - 1]) * TIME_PRECISION;
                current.push(new_segment(tok, seek, start, end, last_slice..cur, &r)?);
                last_slice = cur;
            }
            if single_timestamp_ending {
                seek += resumed.unwrap_or(segment_size);
            } else {
                let last_ts = ts_pos(tokens[last_slice - 1]) as usize;
                seek += last_ts * INPUT_STRIDE;
            }
        } else {
            let mut dur = segment_duration;
            if let Some(&last) = tokens.iter().rev().find(|&&t| t >= sp.timestamp_begin) {
                if last != sp.timestamp_begin {
                    dur = ts_pos(last) * TIME_PRECISION;
                }
            }
            current.push(new_segment(
                tok,
                seek,
                time_offset,
                time_offset + dur,
                0..tokens.len(),
                &r,
            )?);
            seek += resumed.unwrap_or(segment_size);
        }
        if let Some(end) = resumed {
            tracing::debug!(
                ended_s = end as f64 / FRAMES_PER_SECOND,
                left_s = (segment_size - end) as f64 / FRAMES_PER_SECOND,
                "the model ended the window with speech left in it: resuming at its last timestamp"
            );
            if let Some(w) = fallbacks.last_mut() {
                w.resumed_early_end = true;
            }
        }

        if o.word_timestamps {
            let text: Vec<(u32, f32)> = current
                .iter()
                .flat_map(|s| s.tokens.iter().copied().zip(s.text_probs.iter().copied()))
                .filter(|&(t, _)| t < sp.eot)
                .collect();
            let _span = tracing::debug_span!("word_alignment", tokens = text.len()).entered();
            let alignment = timing::find_alignment(
                runner,
                tok,
                &mut state,
                &wo,
                language.as_deref().unwrap_or("en"),
                &text,
                segment_size,
            )?;
            last_speech = timing::add_word_timestamps(
                &mut current,
                alignment,
                time_offset,
                last_speech,
                sp.eot,
                &timing::pauses(
                    &mel_window,
                    mel.n_mels,
                    segment_size.min(mel.n_frames.saturating_sub(window_seek)),
                ),
            );
            // Continue after the last word rather than the last timestamp token, as OpenAI and
            // faster-whisper do with word timestamps (unless the window ended on one timestamp).
            if !single_timestamp_ending {
                let last_word_end = current
                    .iter()
                    .rev()
                    .find_map(|s| s.words.as_ref().and_then(|w| w.last()).map(|w| w.end));
                if let Some(end) = last_word_end {
                    let shift = ((end - time_offset) * FRAMES_PER_SECOND).round();
                    if shift > 0.0 {
                        seek = window_seek + shift as usize;
                    }
                }
            }
        }
        drop(state);

        // Timestamps past the end of the audio (the model sees the zero padding after it) are
        // clamped to the end. Instantaneous segments, and segments without a letter or digit
        // (Whisper's " . ." and "..." over noise and music), carry no text: they are neither
        // output nor fed back as the next window's prompt, where they would breed more of
        // themselves.
        for s in current.iter_mut() {
            s.start = s.start.min(duration);
            s.end = s.end.min(duration);
            if s.start == s.end || !has_words(&s.text) {
                s.text.clear();
                s.tokens.clear();
                s.token_logprobs.clear();
                s.text_probs.clear();
                if s.words.is_some() {
                    s.words = Some(Vec::new());
                }
            }
        }
        for mut s in current {
            if s.text.is_empty() {
                continue;
            }
            all_tokens.extend(s.tokens.iter().copied());
            s.id = segments.len();
            on_segment(&s);
            segments.push(s);
        }
        // The last temperature tried, not the kept one's, as OpenAI and faster-whisper decide.
        if !o.condition_on_previous_text || chosen.last_temperature > 0.5 {
            prompt_reset_since = all_tokens.len();
        }
    }

    let text = tok.decode(&all_tokens[initial_prompt.len()..])?;
    Ok(Transcript {
        text: text.trim().to_string(),
        language: language.unwrap_or_else(|| "en".into()),
        duration,
        segments,
        fallbacks,
        speech: None,
        language_probabilities: None,
        speakers: None,
        diarized: None,
    })
}

/// Whether `text` has anything to read: a letter or digit in any script (ideographs, kana and
/// Thai count as letters).
fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

fn new_segment(
    tok: &WhisperTokenizer,
    seek: usize,
    start: f64,
    end: f64,
    range: std::ops::Range<usize>,
    r: &WindowResult,
) -> Result<Segment, DecodeError> {
    let tokens = &r.tokens[range.clone()];
    Ok(Segment {
        token_logprobs: r.logprobs.get(range.clone()).unwrap_or_default().to_vec(),
        text_probs: r.text_probs.get(range).unwrap_or_default().to_vec(),
        id: 0,
        seek,
        start,
        end,
        text: tok.decode(tokens)?,
        tokens: tokens.to_vec(),
        temperature: r.temperature,
        avg_logprob: r.avg_logprob,
        compression_ratio: r.compression_ratio,
        no_speech_prob: r.no_speech_prob,
        words: None,
        speaker: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ended_early_resumes_only_over_vad_speech_with_enough_left() {
        let vad = Content {
            frames: 10_000,
            chunk_ends: &[],
            speech_only: true,
        };
        let raw = Content {
            speech_only: false,
            ..vad
        };
        // Ended after 5 s of a full window: 25 s of speech follow.
        assert_eq!(early_end_resume(&vad, 500, N_FRAMES), Some(500));
        // Without VAD the rest may be silence: OpenAI's rule, the whole window.
        assert_eq!(early_end_resume(&raw, 500, N_FRAMES), None);
        // Less than 3 s left, an ending at 0 (no progress) or past the audio: the whole window.
        assert_eq!(early_end_resume(&vad, 2_750, N_FRAMES), None);
        assert_eq!(early_end_resume(&vad, 2_700, N_FRAMES), Some(2_700));
        assert_eq!(early_end_resume(&vad, 0, N_FRAMES), None);
        assert_eq!(early_end_resume(&vad, 900, 800), None);
    }
}
