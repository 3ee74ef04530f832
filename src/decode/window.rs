//! Decoding one 30-s window: start sequence, greedy (or sampled) token loop over the KV-cached
//! decoder with the logit rules, and OpenAI's temperature fallback.

use rand::{Rng, SeedableRng};

use super::filters::{apply_timestamp_rules, log_softmax, log_sum_exp, suppress, SuppressTokens};
use super::runner::{ModelRunner, SequenceGuard};
use super::tokens::{TokenizerError, WhisperTokenizer};
use super::{compression_ratio, Task};
use crate::model::DecoderState;

/// At most this many tokens are sampled per window (n_text_ctx / 2).
const SAMPLE_LEN: usize = 224;
/// The first timestamp is at most 1.0 s (50 steps of 0.02 s).
const MAX_INITIAL_TIMESTAMP: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("cancelled: nobody is waiting for this transcript any more")]
    Cancelled,
}

/// Options fixed for one window.
#[derive(Debug, Clone)]
pub struct WindowOptions {
    /// Language token, for multilingual models (None for `.en`).
    pub language_token: Option<u32>,
    pub task: Task,
    pub timestamps: bool,
    /// Previous text tokens (or an initial prompt), already tokenized.
    pub prompt: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct WindowResult {
    /// Sampled tokens, without the start sequence and end-of-text.
    pub tokens: Vec<u32>,
    pub text: String,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f32,
}

/// The start sequence: `[sot_prev, prompt…]`, `sot`, language and task (multilingual only),
/// `notimestamps` when timestamps are off. Returns it and the index of `sot` in it.
pub fn initial_tokens(
    tok: &WhisperTokenizer,
    multilingual: bool,
    o: &WindowOptions,
    n_ctx: usize,
) -> (Vec<u32>, usize) {
    let sp = &tok.specials;
    let mut t = Vec::new();
    if !o.prompt.is_empty() {
        t.push(sp.sot_prev);
        let keep = (n_ctx / 2 - 1).min(o.prompt.len());
        t.extend_from_slice(&o.prompt[o.prompt.len() - keep..]);
    }
    let sot_index = t.len();
    t.push(sp.sot);
    if multilingual {
        if let Some(lang) = o.language_token {
            t.push(lang);
        }
        t.push(match o.task {
            Task::Transcribe => sp.transcribe,
            Task::Translate => sp.translate,
        });
    }
    if !o.timestamps {
        t.push(sp.no_timestamps);
    }
    (t, sot_index)
}

/// Decode one window at one temperature (0 = greedy). `state` holds this window's cross
/// attention and is reset here, so fallbacks reuse it.
#[allow(clippy::too_many_arguments)]
pub fn decode_at_temperature(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    suppress_tokens: &SuppressTokens,
    state: &mut DecoderState,
    o: &WindowOptions,
    temperature: f32,
    rng: &mut rand::rngs::StdRng,
) -> Result<WindowResult, DecodeError> {
    let sp = &tok.specials;
    let model = runner.whisper();
    let n_ctx = model.decoder.n_ctx();
    state.reset();
    let (start, sot_index) = initial_tokens(tok, model.dims.is_multilingual(), o, n_ctx);

    let mut rows = runner.prefill(state, &start, &[sot_index, start.len() - 1])?;
    let _sequence = SequenceGuard(runner);
    let mut logits = rows.pop().unwrap_or_default();
    // Probability of "no speech" at the sot position, before any rule is applied.
    let sot_logits = rows.pop().unwrap_or_default();
    let no_speech_prob = log_softmax(&sot_logits)
        .get(sp.no_speech as usize)
        .map_or(0.0, |l| l.exp());

    let mut sampled: Vec<u32> = Vec::new();
    let mut sum_logprob = 0f64;
    for _ in 0..SAMPLE_LEN {
        if sampled.is_empty() {
            suppress(&mut logits, &suppress_tokens.at_begin);
        }
        suppress(&mut logits, &suppress_tokens.always);
        if o.timestamps {
            apply_timestamp_rules(&mut logits, &sampled, sp, Some(MAX_INITIAL_TIMESTAMP));
        }
        let next = if temperature <= 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, temperature, rng)
        };
        // log-probability of the chosen token under the filtered distribution, as OpenAI sums it.
        sum_logprob += (logits[next as usize] - log_sum_exp(&logits)) as f64;
        if next == sp.eot {
            break;
        }
        sampled.push(next);
        if start.len() + sampled.len() >= n_ctx {
            break;
        }
        logits = runner.step(state, next)?;
    }

    let text = tok.decode(&sampled)?.trim().to_string();
    Ok(WindowResult {
        avg_logprob: (sum_logprob / (sampled.len() + 1) as f64) as f32,
        compression_ratio: compression_ratio(&text),
        text,
        tokens: sampled,
        no_speech_prob,
        temperature,
    })
}

/// Thresholds that decide whether a window is re-decoded at the next temperature.
#[derive(Debug, Clone, Copy)]
pub struct FallbackRules {
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
}

/// Decode with fallback: try each temperature until the result is neither repetitive
/// (compression ratio) nor unlikely (average log-probability), or counts as silence.
#[allow(clippy::too_many_arguments)]
pub fn decode_window(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    suppress_tokens: &SuppressTokens,
    state: &mut DecoderState,
    o: &WindowOptions,
    temperatures: &[f32],
    rules: FallbackRules,
    rng: &mut rand::rngs::StdRng,
) -> Result<WindowResult, DecodeError> {
    let mut last: Option<WindowResult> = None;
    for &t in temperatures {
        let r = decode_at_temperature(runner, tok, suppress_tokens, state, o, t, rng)?;
        let too_repetitive = rules
            .compression_ratio_threshold
            .is_some_and(|th| r.compression_ratio > th);
        let too_unlikely = rules.logprob_threshold.is_some_and(|th| r.avg_logprob < th);
        let silence = rules
            .no_speech_threshold
            .is_some_and(|th| r.no_speech_prob > th)
            && rules.logprob_threshold.is_some_and(|th| r.avg_logprob < th);
        let done = silence || !(too_repetitive || too_unlikely);
        if !done {
            tracing::debug!(
                temperature = t,
                compression_ratio = r.compression_ratio,
                avg_logprob = r.avg_logprob,
                "window fell back to a higher temperature"
            );
        }
        last = Some(r);
        if done {
            break;
        }
    }
    match last {
        Some(r) => Ok(r),
        None => decode_at_temperature(runner, tok, suppress_tokens, state, o, 0.0, rng),
    }
}

pub fn new_rng() -> rand::rngs::StdRng {
    // Fixed seed: the same audio and options give the same transcript, even with fallback.
    rand::rngs::StdRng::seed_from_u64(0x5eed_cafe)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, rng: &mut rand::rngs::StdRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return argmax(logits);
    }
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        x -= w;
        if x <= 0.0 {
            return i as u32;
        }
    }
    argmax(logits)
}
