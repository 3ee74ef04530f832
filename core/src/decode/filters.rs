//! Logit rules applied before each token is chosen, as OpenAI's `decoding.py` applies them:
//! suppress-blank at the first step, the suppress list, and the timestamp rules.

use super::tokens::SpecialTokens;

/// Which tokens to suppress, from the model directory or the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressTokens {
    /// Suppressed at every step (non-speech symbols and the task/control tokens).
    pub always: Vec<u32>,
    /// Suppressed at the first sampled step only (blank `" "` and end-of-text).
    pub at_begin: Vec<u32>,
}

pub fn suppress(logits: &mut [f32], ids: &[u32]) {
    for &t in ids {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

fn fill(logits: &mut [f32], range: std::ops::Range<usize>) {
    let end = range.end.min(logits.len());
    if range.start < end {
        logits[range.start..end].fill(f32::NEG_INFINITY);
    }
}

/// log-softmax of `logits` (−inf stays −inf).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let log_sum = log_sum_exp(logits);
    if !log_sum.is_finite() {
        return logits.to_vec();
    }
    logits.iter().map(|&l| l - log_sum).collect()
}

/// OpenAI's `ApplyTimestampRules`. `sampled` are the tokens chosen so far in this window.
/// `max_initial_timestamp` is in timestamp steps (1.0 s → 50).
pub fn apply_timestamp_rules(
    logits: &mut [f32],
    sampled: &[u32],
    sp: &SpecialTokens,
    max_initial_timestamp: Option<usize>,
) {
    let ts_begin = sp.timestamp_begin as usize;
    let eot = sp.eot as usize;
    suppress(logits, &[sp.no_timestamps]);

    // Timestamps come in pairs, except directly before end-of-text.
    let is_ts = |t: u32| t >= sp.timestamp_begin;
    let last_was_ts = sampled.last().is_some_and(|&t| is_ts(t));
    let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
    if last_was_ts {
        if penultimate_was_ts {
            fill(logits, ts_begin..logits.len()); // a pair just closed: text or end next
        } else {
            fill(logits, 0..eot); // an opening timestamp: a closing one (or end) next
        }
    }

    // Timestamps never decrease, and a segment has non-zero length.
    if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
        let last = if last_was_ts && !penultimate_was_ts {
            last_ts
        } else {
            last_ts + 1
        };
        fill(logits, ts_begin..last as usize);
    }

    if sampled.is_empty() {
        // The first token is a timestamp, no later than max_initial_timestamp.
        fill(logits, 0..ts_begin);
        if let Some(max) = max_initial_timestamp {
            fill(logits, ts_begin + max + 1..logits.len());
        }
    }

    // When the timestamps together are more likely than any single text token, pick a timestamp.
    // (Compared on raw logits: log-softmax shifts both sides by the same constant.)
    if ts_begin < logits.len() {
        let ts_mass = log_sum_exp(&logits[ts_begin..]);
        let text_max = crate::model::kernels::max_value(&logits[..ts_begin]);
        if ts_mass > text_max {
            fill(logits, 0..ts_begin);
        }
    }
}

/// `log(Σ exp(x))`, stable; −inf for an empty or all −inf slice.
pub fn log_sum_exp(xs: &[f32]) -> f32 {
    crate::model::kernels::log_sum_exp(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> SpecialTokens {
        SpecialTokens {
            eot: 10,
            sot: 11,
            sot_prev: 12,
            sot_lm: 13,
            transcribe: 14,
            translate: 15,
            no_speech: 16,
            no_timestamps: 17,
            timestamp_begin: 18,
        }
    }

    fn allowed(l: &[f32]) -> Vec<usize> {
        l.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let mut l = vec![0.0f32; 30];
        apply_timestamp_rules(&mut l, &[], &sp(), Some(2));
        assert_eq!(allowed(&l), vec![18, 19, 20]);
    }

    #[test]
    fn after_opening_timestamp_text_or_closing() {
        let mut l = vec![0.0f32; 30];
        l[3] = 5.0; // a strong text token
        apply_timestamp_rules(&mut l, &[18, 3], &sp(), None);
        // After text following a timestamp, timestamps before 19 are forbidden.
        assert!(l[18].is_infinite());
        assert!(l[19].is_finite());
        // An opening timestamp after text must be followed by a timestamp ≥ it, or end-of-text.
        let mut l = vec![0.0f32; 30];
        apply_timestamp_rules(&mut l, &[18, 3, 22], &sp(), None);
        let a = allowed(&l);
        assert!(a.iter().all(|&t| t == 10 || t >= 22), "{a:?}");
    }

    #[test]
    fn a_closed_pair_is_followed_by_text() {
        let mut l = vec![0.0f32; 30];
        l[3] = 10.0;
        apply_timestamp_rules(&mut l, &[18, 3, 22, 22], &sp(), None);
        assert!(allowed(&l).iter().all(|&t| t < 18));
    }

    #[test]
    fn timestamp_mass_beats_text() {
        let mut l = vec![-10.0f32; 30];
        l[3] = 1.0;
        for v in &mut l[18..] {
            *v = 0.5; // each below the text token, together far above
        }
        apply_timestamp_rules(&mut l, &[18, 3], &sp(), None);
        assert!(l[3].is_infinite());
        assert_eq!(
            log_softmax(&[0.0, 0.0])
                .iter()
                .map(|x| (x.exp() * 100.0).round())
                .collect::<Vec<_>>(),
            vec![50.0, 50.0]
        );
    }
}
