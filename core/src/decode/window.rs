//! Decoding one 30-s window: start sequence, greedy, sampled or beam-search token loop over the
//! KV-cached decoder with the logit rules, and OpenAI's temperature fallback.

use rand::{Rng, SeedableRng};

use super::beam::{decode_beam, BeamOptions};
use super::filters::{apply_timestamp_rules, log_softmax, log_sum_exp, suppress, SuppressTokens};
use super::runner::{ModelRunner, SequenceGuard};
use super::tokens::{TokenizerError, WhisperTokenizer};
use super::{compression_ratio, Task};
use crate::model::DecoderState;

/// At most this many tokens are sampled per window (n_text_ctx / 2).
pub(super) const SAMPLE_LEN: usize = 224;
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
    #[error("no temperature to decode at")]
    NoTemperature,
    #[error("the model returned no logits for a decoder step")]
    NoLogits,
    #[error(transparent)]
    Spill(#[from] crate::audio::SpillError),
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
    /// Keyword tokens, ahead of `prompt` in the prompt (see `TranscribeOptions::keywords`).
    pub keywords: Vec<u32>,
    /// Also record each text token's probability among the text tokens (word confidence).
    pub text_probs: bool,
}

#[derive(Debug, Clone)]
pub struct WindowResult {
    /// Sampled tokens, without the start sequence and end-of-text.
    pub tokens: Vec<u32>,
    /// Each sampled token's log-probability (under the distribution it was chosen from).
    pub logprobs: Vec<f32>,
    /// With `WindowOptions::text_probs`: each sampled token's probability under the model's own
    /// distribution over text tokens (no rules applied; OpenAI's word probability); else empty.
    pub text_probs: Vec<f32>,
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
    if !o.prompt.is_empty() || !o.keywords.is_empty() {
        t.push(sp.sot_prev);
        // One budget for both: keywords first, then as much of the previous text as fits.
        let budget = (n_ctx / 2).saturating_sub(1);
        let kw = &o.keywords[..o.keywords.len().min(budget)];
        t.extend_from_slice(kw);
        let keep = (budget - kw.len()).min(o.prompt.len());
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

/// The logit rules before a token is chosen, given the tokens `sampled` so far in the window:
/// suppress-blank at the first step, the suppress list, the timestamp rules.
pub(super) fn apply_rules(
    logits: &mut [f32],
    sampled: &[u32],
    suppress_tokens: &SuppressTokens,
    sp: &super::SpecialTokens,
    timestamps: bool,
) {
    if sampled.is_empty() {
        suppress(logits, &suppress_tokens.at_begin);
    }
    suppress(logits, &suppress_tokens.always);
    if timestamps {
        apply_timestamp_rules(logits, sampled, sp, Some(MAX_INITIAL_TIMESTAMP));
    }
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
    let dims = runner.dims();
    let n_ctx = dims.n_text_ctx;
    state.reset();
    let (start, sot_index) = initial_tokens(tok, dims.is_multilingual(), o, n_ctx);

    let mut rows = runner.prefill(state, &start, &[sot_index, start.len() - 1])?;
    let _sequence = SequenceGuard(runner);
    let mut logits = rows.pop().unwrap_or_default();
    // Probability of "no speech" at the sot position, before any rule is applied.
    let sot_logits = rows.pop().unwrap_or_default();
    let no_speech_prob = log_softmax(&sot_logits)
        .get(sp.no_speech as usize)
        .map_or(0.0, |l| l.exp());

    let mut sampled: Vec<u32> = Vec::new();
    let mut logprobs: Vec<f32> = Vec::new();
    let mut text_probs: Vec<f32> = Vec::new();
    let mut sum_logprob = 0f64;
    for _ in 0..SAMPLE_LEN {
        // Before any rule: the normaliser over the text tokens.
        let text_lse = if o.text_probs {
            log_sum_exp(&logits[..(sp.eot as usize).min(logits.len())])
        } else {
            0.0
        };
        apply_rules(&mut logits, &sampled, suppress_tokens, sp, o.timestamps);
        let next = if temperature <= 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, temperature, rng)
        };
        // log-probability of the chosen token under the filtered distribution, as OpenAI sums it.
        let logprob = logits[next as usize] - log_sum_exp(&logits);
        sum_logprob += logprob as f64;
        if next == sp.eot {
            break;
        }
        sampled.push(next);
        logprobs.push(logprob);
        if o.text_probs {
            // Rules only ever remove tokens, so a chosen token's logit is the model's own.
            text_probs.push(if next < sp.eot {
                (logits[next as usize] - text_lse).exp()
            } else {
                0.0
            });
        }
        if start.len() + sampled.len() >= n_ctx {
            break;
        }
        logits = runner
            .step(std::slice::from_mut(state), &[next])?
            .pop()
            .ok_or(DecodeError::NoLogits)?;
    }

    let text = tok.decode(&sampled)?.trim().to_string();
    Ok(WindowResult {
        avg_logprob: (sum_logprob / (sampled.len() + 1) as f64) as f32,
        compression_ratio: compression_ratio(&text),
        text,
        tokens: sampled,
        logprobs,
        text_probs,
        no_speech_prob,
        temperature,
    })
}

/// How a window is decoded at each temperature (beam search at 0, `best_of` samples above) and
/// the thresholds that decide whether it is re-decoded at the next temperature.
#[derive(Debug, Clone, Copy)]
pub struct FallbackRules {
    /// Beam search at temperature 0 (`beam_size` 1: greedy).
    pub beam: BeamOptions,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    /// Samples drawn at each temperature above 0; the one with the best average
    /// log-probability is that temperature's attempt (OpenAI's and faster-whisper's `best_of`).
    pub best_of: usize,
}

/// How a window's temperature fallback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FallbackOutcome {
    /// An attempt passed the checks (or counted as silence): its result is kept.
    #[default]
    Passed,
    /// Every temperature failed: the best-scoring attempt is kept (see [`select_fallback`]).
    BestOfFailed,
}

impl FallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackOutcome::Passed => "passed",
            FallbackOutcome::BestOfFailed => "best_of_failed",
        }
    }
}

/// Where one window's fallback ended: the outcome and the temperature of the kept text.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowFallback {
    pub outcome: FallbackOutcome,
    pub temperature: f32,
    /// The model ended the window with speech left in it and the next window resumed where it
    /// ended (rather than after the whole window, as OpenAI's loop does).
    pub resumed_early_end: bool,
}

/// A window's kept result, how fallback chose it, and the last temperature tried (which, as in
/// OpenAI's and faster-whisper's loops, decides whether the next window keeps the prompt).
#[derive(Debug, Clone)]
pub struct FallbackResult {
    pub result: WindowResult,
    pub outcome: FallbackOutcome,
    pub last_temperature: f32,
}

impl FallbackRules {
    fn too_repetitive(&self, r: &WindowResult) -> bool {
        self.compression_ratio_threshold
            .is_some_and(|th| r.compression_ratio > th)
    }

    fn too_unlikely(&self, r: &WindowResult) -> bool {
        self.logprob_threshold.is_some_and(|th| r.avg_logprob < th)
    }

    /// No speech is likely and the text unlikely: the window is silence, no need to retry.
    fn silence(&self, r: &WindowResult) -> bool {
        self.no_speech_threshold
            .is_some_and(|th| r.no_speech_prob > th)
            && self.too_unlikely(r)
    }

    /// Whether `r` ends the fallback loop.
    pub fn passes(&self, r: &WindowResult) -> bool {
        self.silence(r) || !(self.too_repetitive(r) || self.too_unlikely(r))
    }
}

/// The fallback loop, the one place it is decided (every path, the continuous-batching scheduler
/// included, decodes windows through [`decode_window`]). `attempt(t)` decodes at temperature `t`.
/// The first attempt that passes [`FallbackRules::passes`] is kept. When every temperature
/// fails, faster-whisper's rule (not OpenAI's "keep the last sample"): among the attempts whose
/// compression ratio is within the threshold (all attempts if none is), the one with the highest
/// average log-probability, first one on a tie.
pub fn select_fallback(
    temperatures: &[f32],
    rules: FallbackRules,
    mut attempt: impl FnMut(f32) -> Result<WindowResult, DecodeError>,
) -> Result<FallbackResult, DecodeError> {
    let temperatures: &[f32] = if temperatures.is_empty() {
        &[0.0]
    } else {
        temperatures
    };
    let mut failed: Vec<WindowResult> = Vec::with_capacity(temperatures.len());
    for &t in temperatures {
        let r = attempt(t)?;
        if rules.passes(&r) {
            return Ok(FallbackResult {
                result: r,
                outcome: FallbackOutcome::Passed,
                last_temperature: t,
            });
        }
        tracing::debug!(
            temperature = t,
            compression_ratio = r.compression_ratio,
            avg_logprob = r.avg_logprob,
            "window failed the fallback checks"
        );
        failed.push(r);
    }
    let last_temperature = *temperatures.last().unwrap_or(&0.0);
    let any_below_cr = failed.iter().any(|r| !rules.too_repetitive(r));
    let mut best: Option<WindowResult> = None;
    for r in failed {
        if any_below_cr && rules.too_repetitive(&r) {
            continue;
        }
        if best.as_ref().is_none_or(|b| r.avg_logprob > b.avg_logprob) {
            best = Some(r);
        }
    }
    // `temperatures` is never empty, so neither is `failed`; still a typed error, not a panic.
    let result = best.ok_or(DecodeError::NoTemperature)?;
    tracing::info!(
        temperature = result.temperature,
        avg_logprob = result.avg_logprob,
        compression_ratio = result.compression_ratio,
        "every temperature failed; kept the best-scoring attempt"
    );
    Ok(FallbackResult {
        result,
        outcome: FallbackOutcome::BestOfFailed,
        last_temperature,
    })
}

/// Decode with fallback: try each temperature until the result is neither repetitive
/// (compression ratio) nor unlikely (average log-probability), or counts as silence; if none
/// passes, keep the best attempt ([`select_fallback`]).
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
) -> Result<FallbackResult, DecodeError> {
    select_fallback(temperatures, rules, |t| {
        if t <= 0.0 && rules.beam.beam_size > 1 {
            return decode_beam(runner, tok, suppress_tokens, state, o, rules.beam);
        }
        let samples = if t > 0.0 { rules.best_of.max(1) } else { 1 };
        let mut best = decode_at_temperature(runner, tok, suppress_tokens, state, o, t, rng)?;
        for _ in 1..samples {
            let r = decode_at_temperature(runner, tok, suppress_tokens, state, o, t, rng)?;
            if r.avg_logprob > best.avg_logprob {
                best = r;
            }
        }
        Ok(best)
    })
}

pub fn new_rng() -> rand::rngs::StdRng {
    // Fixed seed: the same audio and options give the same transcript, even with fallback.
    rand::rngs::StdRng::seed_from_u64(0x5eed_cafe)
}

/// The first index of the largest logit (0 for an empty slice or a NaN first).
fn argmax(logits: &[f32]) -> u32 {
    // The first index holding the vectorized maximum: the index a scan keeping strictly
    // greater values finds. A NaN first logit compares false with everything: such a scan
    // stays at 0.
    if logits.first().is_none_or(|l| l.is_nan()) {
        return 0;
    }
    let max = crate::model::kernels::max_value(logits);
    logits.iter().position(|&l| l == max).unwrap_or(0) as u32
}

fn sample(logits: &[f32], temperature: f32, rng: &mut rand::rngs::StdRng) -> u32 {
    let max = crate::model::kernels::max_value(logits);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `argmax` is the first index of the largest logit, as a scan keeping strictly greater
    /// values finds it: ties, −∞, NaN anywhere (first included), the largest in the tail.
    #[test]
    fn argmax_is_the_first_largest() {
        let scan = |xs: &[f32]| {
            let mut best = 0usize;
            for (i, &l) in xs.iter().enumerate() {
                if l > xs[best] {
                    best = i;
                }
            }
            best as u32
        };
        let base: Vec<f32> = (0..51_864)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let mut cases = vec![vec![], vec![f32::NEG_INFINITY; 5], vec![0.0, -0.0, 0.0]];
        cases.push(base.clone()); // ties: 9.99 many times
        let mut tail = base.clone();
        tail[51_863] = 20.0;
        cases.push(tail);
        for at in [0, 7, 51_000] {
            let mut nan = base.clone();
            nan[at] = f32::NAN;
            cases.push(nan);
        }
        for xs in &cases {
            assert_eq!(argmax(xs), scan(xs), "{} logits", xs.len());
        }
    }

    fn attempt(temperature: f32, avg_logprob: f32, compression_ratio: f32) -> WindowResult {
        WindowResult {
            tokens: vec![1, 2, 3],
            logprobs: vec![-0.1; 3],
            text_probs: vec![],
            text: format!("text at {temperature}"),
            avg_logprob,
            no_speech_prob: 0.01,
            temperature,
            compression_ratio,
        }
    }

    const RULES: FallbackRules = FallbackRules {
        beam: BeamOptions {
            beam_size: 1,
            patience: 1.0,
            length_penalty: None,
        },
        compression_ratio_threshold: Some(2.4),
        logprob_threshold: Some(-1.0),
        no_speech_threshold: Some(0.6),
        best_of: 5,
    };
    const TEMPERATURES: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

    /// Runs the fallback over canned attempts, one per temperature; also returns the
    /// temperatures tried.
    fn run(attempts: &[WindowResult]) -> (FallbackResult, Vec<f32>) {
        let mut tried = Vec::new();
        let r = select_fallback(&TEMPERATURES, RULES, |t| {
            tried.push(t);
            Ok(attempts
                .iter()
                .find(|a| a.temperature == t)
                .unwrap()
                .clone())
        })
        .unwrap();
        (r, tried)
    }

    #[test]
    fn every_temperature_failing_keeps_the_best_scoring_attempt_not_the_last() {
        // A translation-like window: every attempt just under the log-probability threshold, the
        // greedy one (T = 0) scoring best; T = 0.4 scores higher but is repetitive.
        let attempts = [
            attempt(0.0, -1.05, 1.3),
            attempt(0.2, -1.40, 1.2),
            attempt(0.4, -0.50, 3.1),
            attempt(0.6, -1.90, 1.1),
            attempt(0.8, -2.30, 1.0),
            attempt(1.0, -3.00, 0.9),
        ];
        let (r, tried) = run(&attempts);
        assert_eq!(tried, TEMPERATURES);
        assert_eq!(r.outcome, FallbackOutcome::BestOfFailed);
        assert_eq!(r.result.temperature, 0.0);
        assert_eq!(r.result.text, "text at 0");
        assert_eq!(r.result.avg_logprob, -1.05);
        // The prompt-reset decision still sees the last temperature tried.
        assert_eq!(r.last_temperature, 1.0);
    }

    #[test]
    fn all_repetitive_keeps_the_best_scoring_of_all() {
        let attempts = [
            attempt(0.0, -1.5, 3.0),
            attempt(0.2, -1.2, 2.9),
            attempt(0.4, -1.8, 2.6),
            attempt(0.6, -0.9, 2.5),
            attempt(0.8, -2.0, 4.0),
            attempt(1.0, -0.95, 2.8),
        ];
        let (r, tried) = run(&attempts);
        assert_eq!(tried, TEMPERATURES);
        assert_eq!(r.outcome, FallbackOutcome::BestOfFailed);
        assert_eq!(r.result.temperature, 0.6);
    }

    #[test]
    fn first_passing_attempt_is_kept() {
        let attempts = [
            attempt(0.0, -1.2, 1.3),
            attempt(0.2, -0.8, 1.2),
            attempt(0.4, -0.1, 1.0),
            attempt(0.6, -0.1, 1.0),
            attempt(0.8, -0.1, 1.0),
            attempt(1.0, -0.1, 1.0),
        ];
        let (r, tried) = run(&attempts);
        assert_eq!(tried, [0.0, 0.2]);
        assert_eq!(r.outcome, FallbackOutcome::Passed);
        assert_eq!((r.result.temperature, r.last_temperature), (0.2, 0.2));
    }

    #[test]
    fn silence_passes_at_once() {
        let mut quiet = attempt(0.0, -1.5, 1.0);
        quiet.no_speech_prob = 0.9;
        let attempts = [quiet];
        let (r, tried) = run(&attempts);
        assert_eq!(tried, [0.0]);
        assert_eq!(r.outcome, FallbackOutcome::Passed);
    }
}
