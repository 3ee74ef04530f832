//! Beam search over one 30-s window at temperature 0: `beam_size` hypotheses ranked by their sum
//! of log-probabilities (after the logit rules, per hypothesis), hypotheses that end collected
//! until `beam_size × patience` have, the finished ones ranked by the length-penalised score
//! (openai-whisper's `MaximumLikelihoodRanker`).
//!
//! Where openai-whisper's `BeamSearchDecoder` and CTranslate2 (faster-whisper) differ, this
//! follows CTranslate2, so that the same weights give faster-whisper's text: each step keeps the
//! best `2 × beam_size` candidates over all hypotheses; only an end among the first `beam_size`
//! finishes a hypothesis, and its slot goes to the next candidate that does not end; at the last
//! step (224 tokens, or the context's end) the first `beam_size` all finish. The length penalty
//! is openai-whisper's: `None` divides by the length (faster-whisper's default
//! `length_penalty=1` is the same), `Some(α)` by `((5 + length) / 6)^α`.
//!
//! The hypotheses are lanes of one sequence: one decoder step feeds every lane's token (batched
//! with other requests' sequences by the scheduler), every lane shares the window's audio
//! keys/values and the start sequence's cache, and a lane that continues another copies only
//! the tokens decoded since the start (`DecoderState::fork`).

use super::filters::{log_softmax, log_sum_exp, SuppressTokens};
use super::runner::{ModelRunner, SequenceGuard};
use super::tokens::WhisperTokenizer;
use super::window::{apply_rules, initial_tokens, WindowOptions, WindowResult, SAMPLE_LEN};
use super::{compression_ratio, DecodeError};
use crate::model::DecoderState;
use rayon::prelude::*;

/// Most beams a request may ask for (each is a row of every decoder step).
pub const MAX_BEAM_SIZE: usize = 16;

/// Beam search settings; `beam_size` 1 is greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamOptions {
    pub beam_size: usize,
    /// Finished candidates collected before a window stops: `beam_size × patience`
    /// (at least one). 1.0 is the classic beam search.
    pub patience: f32,
    /// `None`: rank finished candidates by their log-probability divided by their length;
    /// `Some(α)`: divided by the Google NMT penalty `((5 + length) / 6)^α`.
    pub length_penalty: Option<f32>,
}

impl Default for BeamOptions {
    fn default() -> Self {
        Self {
            beam_size: 1,
            patience: 1.0,
            length_penalty: None,
        }
    }
}

impl BeamOptions {
    /// Checks the settings; the error names the bad one.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_BEAM_SIZE).contains(&self.beam_size) {
            return Err((
                "beam_size",
                format!("beam_size must be between 1 and {MAX_BEAM_SIZE}"),
            ));
        }
        if !(self.patience.is_finite() && self.patience > 0.0 && self.patience <= 10.0) {
            return Err((
                "patience",
                "patience must be a number above 0 and at most 10".into(),
            ));
        }
        if self
            .length_penalty
            .is_some_and(|a| !(a.is_finite() && (0.0..=10.0).contains(&a)))
        {
            return Err((
                "length_penalty",
                "length_penalty must be `none` or a number between 0 and 10".into(),
            ));
        }
        Ok(())
    }

    /// Finished candidates to collect before the window stops.
    fn max_candidates(&self) -> usize {
        ((self.beam_size as f32 * self.patience).round() as usize).max(1)
    }

    /// The ranking score of a finished hypothesis: its log-probability over the length penalty.
    fn score(&self, sum_logprob: f32, length: usize) -> f32 {
        let length = length as f32;
        let penalty = match self.length_penalty {
            None => length,
            Some(a) => ((5.0 + length) / 6.0).powf(a),
        };
        if penalty > 0.0 {
            sum_logprob / penalty
        } else {
            sum_logprob
        }
    }
}

/// A length-penalty setting from text: a number, or `none` for plain length normalisation.
pub fn parse_length_penalty(v: &str) -> Result<Option<f32>, String> {
    let v = v.trim();
    if matches!(v.to_ascii_lowercase().as_str(), "none" | "null" | "") {
        return Ok(None);
    }
    match v.parse::<f32>() {
        Ok(a) if a.is_finite() && (0.0..=10.0).contains(&a) => Ok(Some(a)),
        _ => Err(format!(
            "must be `none` or a number between 0 and 10, not `{v}`"
        )),
    }
}

/// One hypothesis: its tokens after the start sequence (no end-of-text) and their scores.
#[derive(Debug, Clone, Default)]
struct Hypothesis {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    text_probs: Vec<f32>,
    /// Sum of the tokens' log-probabilities, end-of-text's included once it ended.
    sum_logprob: f32,
}

/// One way to extend a hypothesis by one token.
struct Candidate {
    score: f32,
    lane: usize,
    token: u32,
    logprob: f32,
    text_prob: f32,
}

/// The `k` highest entries of `xs` (index, value), best first; ties keep the lower index first.
/// `-∞` (suppressed) and NaN never enter.
///
/// Most of a vocabulary's ~51,900 logits fall below the `k` kept so far: a block of
/// [`TOP_K_BLOCK`] is tested against the current `k`-th best with one branch-free comparison
/// (vectorized), and only a block holding a better value is walked one by one. Once the list is
/// full, an entry enters only when it is strictly greater than the `k`-th best, so skipping a
/// block with none greater changes nothing.
fn top_k(xs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (b, block) in xs.chunks(TOP_K_BLOCK).enumerate() {
        // Below the `k`-th best (or −∞ while the list fills): nothing to insert. NaN compares
        // false, so it never makes a block count.
        let floor = if best.len() == k {
            best[k - 1].1
        } else {
            f32::NEG_INFINITY
        };
        if !block.iter().fold(false, |any, &x| any | (x > floor)) {
            continue;
        }
        for (j, &x) in block.iter().enumerate() {
            if x == f32::NEG_INFINITY || x.is_nan() {
                continue;
            }
            if best.len() == k && best.last().is_some_and(|&(_, w)| x <= w) {
                continue;
            }
            let at = best.partition_point(|&(_, w)| w >= x);
            best.insert(at, (b * TOP_K_BLOCK + j, x));
            best.truncate(k);
        }
    }
    best
}

/// Logits per block of [`top_k`]'s test.
const TOP_K_BLOCK: usize = 64;

/// Decode one window with beam search (temperature 0). `state` holds this window's cross
/// attention and is reset here, so fallbacks reuse it.
pub fn decode_beam(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    suppress_tokens: &SuppressTokens,
    state: &mut DecoderState,
    o: &WindowOptions,
    beam: BeamOptions,
) -> Result<WindowResult, DecodeError> {
    let _span = tracing::debug_span!(
        "beam_search",
        beam_size = beam.beam_size,
        patience = beam.patience
    )
    .entered();
    let sp = &tok.specials;
    let dims = runner.dims();
    let n_ctx = dims.n_text_ctx;
    let beam_size = beam.beam_size.max(1);
    let max_candidates = beam.max_candidates();
    state.reset();
    let (start, sot_index) = initial_tokens(tok, dims.is_multilingual(), o, n_ctx);

    let mut rows = runner.prefill(state, &start, &[sot_index, start.len() - 1])?;
    let _sequence = SequenceGuard(runner);
    let first_logits = rows.pop().ok_or(DecodeError::NoLogits)?;
    let sot_logits = rows.pop().ok_or(DecodeError::NoLogits)?;
    let no_speech_prob = log_softmax(&sot_logits)
        .get(sp.no_speech as usize)
        .map_or(0.0, |l| l.exp());

    // Every lane reads the start sequence's keys/values from one shared copy.
    state.share_prefix();
    let mut lanes: Vec<DecoderState> = vec![state.fork()];
    let mut alive: Vec<Hypothesis> = vec![Hypothesis::default()];
    let mut lane_logits: Vec<Vec<f32>> = vec![first_logits];
    let mut finished: Vec<Hypothesis> = Vec::new();
    let eot_len = (sp.eot as usize).min(lane_logits[0].len());
    // Steps: the start sequence's last token is fed at step 0, every step adds one position.
    let max_steps = SAMPLE_LEN.min(n_ctx.saturating_sub(start.len() - 1)).max(1);
    let n_candidates = 2 * beam_size;

    let mut steps = 0;
    for step in 0..max_steps {
        steps = step + 1;
        let last_step = step + 1 == max_steps;
        // The `2 × beam_size` best continuations over all hypotheses: the union of each
        // hypothesis's own best ones holds them.
        // Lanes in parallel (each walks its own ~51,900 logits), gathered in lane order.
        let mut candidates: Vec<Candidate> = alive
            .par_iter()
            .zip(lane_logits.par_iter_mut())
            .enumerate()
            .map(|(lane, (h, logits))| {
                lane_candidates(
                    lane,
                    h,
                    logits,
                    suppress_tokens,
                    sp,
                    o,
                    eot_len,
                    n_candidates,
                )
            })
            .flatten_iter()
            .collect();
        // Best first; equal scores: the earlier lane, then the lower token.
        candidates.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.lane.cmp(&b.lane))
                .then(a.token.cmp(&b.token))
        });
        candidates.truncate(n_candidates);

        // The best `beam_size` candidates decide: one that ends (or any, on the last step)
        // finishes its hypothesis, and its slot goes to the next candidate below them that does
        // not end. Ends ranked below the first `beam_size` are not kept.
        let extend = |c: &Candidate, with_token: bool| {
            let parent = &alive[c.lane];
            let mut h = Hypothesis {
                tokens: parent.tokens.clone(),
                logprobs: parent.logprobs.clone(),
                text_probs: parent.text_probs.clone(),
                sum_logprob: c.score,
            };
            if with_token {
                h.tokens.push(c.token);
                h.logprobs.push(c.logprob);
                if o.text_probs {
                    h.text_probs.push(c.text_prob);
                }
            }
            h
        };
        let mut slots: Vec<&Candidate> = Vec::with_capacity(beam_size);
        let mut spare = beam_size;
        for c in candidates.iter().take(beam_size) {
            let ends = c.token == sp.eot;
            if ends || last_step {
                finished.push(extend(c, !ends));
                while candidates.get(spare).is_some_and(|s| s.token == sp.eot) {
                    spare += 1;
                }
                if let Some(s) = candidates.get(spare) {
                    slots.push(s);
                    spare += 1;
                }
            } else {
                slots.push(c);
            }
        }
        if last_step || finished.len() >= max_candidates || slots.is_empty() {
            break;
        }
        let parents: Vec<usize> = slots.iter().map(|c| c.lane).collect();
        let tokens: Vec<u32> = slots.iter().map(|c| c.token).collect();
        alive = slots.iter().map(|c| extend(c, true)).collect();
        lanes = reorder(lanes, &parents);
        lane_logits = runner.step(&mut lanes, &tokens)?;
        if lane_logits.len() != lanes.len() {
            return Err(DecodeError::NoLogits);
        }
    }
    let candidates = finished.len();
    // The finished hypothesis with the best length-penalised score; the first on a tie.
    let mut best: Option<(f32, Hypothesis)> = None;
    for h in finished {
        let score = beam.score(h.sum_logprob, h.tokens.len());
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, h));
        }
    }
    let best = best.map(|(_, h)| h).unwrap_or_default();
    tracing::debug!(
        steps,
        candidates,
        tokens = best.tokens.len(),
        sum_logprob = best.sum_logprob,
        "beam search chose a hypothesis"
    );
    let text = tok.decode(&best.tokens)?.trim().to_string();
    Ok(WindowResult {
        avg_logprob: best.sum_logprob / (best.tokens.len() + 1) as f32,
        compression_ratio: compression_ratio(&text),
        text,
        tokens: best.tokens,
        logprobs: best.logprobs,
        text_probs: best.text_probs,
        no_speech_prob,
        temperature: 0.0,
    })
}

/// Hypothesis `h`'s (lane `lane`'s) best `n` continuations, after the logit rules on its
/// `logits` (rewritten in place).
#[allow(clippy::too_many_arguments)]
fn lane_candidates(
    lane: usize,
    h: &Hypothesis,
    logits: &mut [f32],
    suppress_tokens: &SuppressTokens,
    sp: &super::SpecialTokens,
    o: &WindowOptions,
    eot_len: usize,
    n: usize,
) -> Vec<Candidate> {
    let text_lse = if o.text_probs {
        log_sum_exp(&logits[..eot_len.min(logits.len())])
    } else {
        0.0
    };
    apply_rules(logits, &h.tokens, suppress_tokens, sp, o.timestamps);
    // Log-probabilities over what the rules left (f32, as CTranslate2 adds them).
    let lse = log_sum_exp(logits);
    top_k(logits, n)
        .into_iter()
        .map(|(token, logit)| {
            let logprob = logit - lse;
            let token = token as u32;
            Candidate {
                score: h.sum_logprob + logprob,
                lane,
                token,
                logprob,
                // Rules only remove tokens: a kept token's logit is the model's own.
                text_prob: if o.text_probs && token < sp.eot {
                    (logit - text_lse).exp()
                } else {
                    0.0
                },
            }
        })
        .collect()
}

/// The lanes for the next step: lane `j` continues `lanes[parents[j]]`. A parent's last child
/// takes it over; its other children are forks (which copy only the decoded tokens' cache).
fn reorder(lanes: Vec<DecoderState>, parents: &[usize]) -> Vec<DecoderState> {
    let mut remaining = vec![0usize; lanes.len()];
    for &p in parents {
        remaining[p] += 1;
    }
    let mut old: Vec<Option<DecoderState>> = lanes.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(parents.len());
    for &p in parents {
        remaining[p] -= 1;
        let lane = if remaining[p] == 0 {
            old[p].take()
        } else {
            old[p].as_ref().map(DecoderState::fork)
        };
        // Every parent index comes from `alive`, which has one lane each: always present.
        out.push(lane.unwrap_or_else(DecoderState::empty));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_best_first_and_skips_suppressed() {
        let xs = [0.5, f32::NEG_INFINITY, 2.0, 1.0, 2.0, -3.0];
        assert_eq!(top_k(&xs, 3), vec![(2, 2.0), (4, 2.0), (3, 1.0)]);
        assert_eq!(top_k(&xs, 10).len(), 5);
        assert!(top_k(&[f32::NEG_INFINITY; 4], 2).is_empty());
    }

    /// The block-skipping `top_k` against a full sort: random logits with repeats (ties across
    /// blocks), −∞ and NaN, lengths around the block size, k from 0 to past the length.
    #[test]
    fn top_k_matches_a_full_sort() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for len in [0, 1, 5, 63, 64, 65, 130, 1000, 51_864] {
            for round in 0..4 {
                let xs: Vec<f32> = (0..len)
                    .map(|_| match next() % 50 {
                        0 => f32::NEG_INFINITY,
                        1 => f32::NAN,
                        // Few distinct values in round 0: many ties.
                        r if round == 0 => (r % 7) as f32,
                        _ => (next() % 100_000) as f32 / 1000.0 - 50.0,
                    })
                    .collect();
                let mut want: Vec<(usize, f32)> = xs
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, x)| x != f32::NEG_INFINITY && !x.is_nan())
                    .collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                for k in [0, 1, 2, 5, 10, 32, len + 1] {
                    let got = top_k(&xs, k);
                    assert_eq!(got, want[..k.min(want.len())], "len {len} k {k}");
                }
            }
        }
    }

    #[test]
    fn length_penalty_ranks_as_openai_does() {
        let plain = BeamOptions::default();
        // None: log-probability per token.
        assert_eq!(plain.score(-6.0, 3), -2.0);
        let nmt = BeamOptions {
            length_penalty: Some(1.0),
            ..plain
        };
        // ((5 + 7) / 6)^1 = 2.
        assert_eq!(nmt.score(-6.0, 7), -3.0);
        let none = BeamOptions {
            length_penalty: Some(0.0),
            ..plain
        };
        assert_eq!(none.score(-6.0, 7), -6.0);
    }

    #[test]
    fn settings_are_checked_by_name() {
        let ok = BeamOptions {
            beam_size: 5,
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        for (bad, name) in [
            (BeamOptions { beam_size: 0, ..ok }, "beam_size"),
            (
                BeamOptions {
                    beam_size: 17,
                    ..ok
                },
                "beam_size",
            ),
            (
                BeamOptions {
                    patience: 0.0,
                    ..ok
                },
                "patience",
            ),
            (
                BeamOptions {
                    patience: f32::NAN,
                    ..ok
                },
                "patience",
            ),
            (
                BeamOptions {
                    length_penalty: Some(-1.0),
                    ..ok
                },
                "length_penalty",
            ),
        ] {
            assert_eq!(bad.check().unwrap_err().0, name);
        }
        assert_eq!(ok.max_candidates(), 5);
        assert_eq!(
            BeamOptions {
                patience: 2.0,
                ..ok
            }
            .max_candidates(),
            10
        );
        assert_eq!(parse_length_penalty("none"), Ok(None));
        assert_eq!(parse_length_penalty(" 0.6"), Ok(Some(0.6)));
        assert!(parse_length_penalty("long").is_err() && parse_length_penalty("-1").is_err());
    }
}
