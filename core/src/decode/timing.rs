//! Word-level timestamps from the model itself, as OpenAI's `timing.py` computes them: after a
//! window is decoded, one decoder pass over its text tokens (no timestamps, no prompt) gives the
//! cross-attention of the model's alignment heads; those weights are normalised per frame,
//! median-filtered and averaged over heads, and dynamic time warping finds the monotonic path
//! from tokens to audio frames. Tokens are grouped into words the way the language writes them
//! (spaces, or per character for languages written without them), punctuation joins its
//! neighbour, and the heuristics OpenAI and faster-whisper apply to implausibly long words at
//! sentence and segment edges follow.

use super::runner::ModelRunner;
use super::tokens::WhisperTokenizer;
use super::window::{initial_tokens, WindowOptions};
use super::DecodeError;
use crate::mel::N_FRAMES;
use crate::model::{AlignRequest, DecoderState};
use crate::transcript::{Segment, Word};

/// Audio positions per second of the encoder output (two mel frames each).
const TOKENS_PER_SECOND: f64 = 50.0;
/// Width of the median filter over frames (OpenAI's and faster-whisper's default).
const MEDFILT_WIDTH: usize = 7;
/// Punctuation joined to the following word (OpenAI's `prepend_punctuations`).
pub const PREPEND_PUNCTUATIONS: &str = "\"'“¿([{-";
/// Punctuation joined to the preceding word (OpenAI's `append_punctuations`).
pub const APPEND_PUNCTUATIONS: &str = "\"'.。,，!！?？:：”)]}、";
/// Python's `string.punctuation`.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// Languages written without spaces between words: split per character (OpenAI's list).
const NO_SPACE_LANGUAGES: [&str; 6] = ["zh", "ja", "th", "lo", "my", "yue"];

/// One word as the alignment places it, in seconds from the window's start.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
}

/// Words and their timing for the text tokens of one window (no special tokens), each with its
/// probability among the text tokens as decoded (a word's is their mean); the window's decoding
/// `state` holds its audio and `window` its language and task; `n_frames` mel frames of the
/// window are audio.
pub fn find_alignment(
    runner: &dyn ModelRunner,
    tok: &WhisperTokenizer,
    state: &mut DecoderState,
    window: &WindowOptions,
    language: &str,
    text: &[(u32, f32)],
    n_frames: usize,
) -> Result<Vec<WordTiming>, DecodeError> {
    let (text_tokens, probs): (Vec<u32>, Vec<f32>) = text.iter().copied().unzip();
    let (text_tokens, probs) = (text_tokens.as_slice(), probs.as_slice());
    if text_tokens.is_empty() {
        return Ok(Vec::new());
    }
    let dims = runner.dims();
    let sp = &tok.specials;
    // The start sequence without prompt, ending in `notimestamps`, then the text and `eot`.
    let wo = WindowOptions {
        language_token: window.language_token,
        task: window.task,
        timestamps: false,
        prompt: Vec::new(),
        keywords: Vec::new(),
        text_probs: false,
    };
    let (mut tokens, _) = initial_tokens(tok, dims.is_multilingual(), &wo, dims.n_text_ctx);
    let sot_len = tokens.len() - 1; // OpenAI's `sot_sequence` excludes `notimestamps`
    tokens.extend_from_slice(text_tokens);
    tokens.push(sp.eot);
    if tokens.len() > dims.n_text_ctx {
        return Ok(Vec::new());
    }
    // The tokens' probabilities come from decoding (`probs`), so the pass needs no vocabulary
    // projection (150 rows × 51,864 outputs would be most of its cost).
    let out = runner.align(
        state,
        AlignRequest {
            tokens: tokens.clone(),
            n_frames: n_frames / 2,
            targets: Vec::new(),
            vocab_limit: sp.eot as usize,
        },
    )?;
    let matrix = alignment_matrix(&out.weights, tokens.len(), out.n_frames);
    // Rows of `notimestamps` and the text tokens (not the start sequence, not `eot`).
    let rows = tokens.len() - 1 - sot_len;
    let m = out.n_frames;
    let sub = &matrix[sot_len * m..(sot_len + rows) * m];
    let neg: Vec<f64> = sub.iter().map(|&x| -(x as f64)).collect();
    let (text_idx, time_idx) = dtw(&neg, rows, m);

    let (words, word_tokens) = split_to_word_tokens(tok, text_tokens, language)?;
    if words.is_empty() {
        return Ok(Vec::new());
    }
    // The time each row is first reached on the path.
    let mut jump_times = Vec::with_capacity(rows);
    for (k, (&ti, &fi)) in text_idx.iter().zip(&time_idx).enumerate() {
        if k == 0 || ti != text_idx[k - 1] {
            jump_times.push(fi as f64 / TOKENS_PER_SECOND);
        }
    }
    let mut boundaries = vec![0usize];
    for wt in &word_tokens {
        boundaries.push(boundaries[boundaries.len() - 1] + wt.len());
    }
    let mut timings = Vec::with_capacity(words.len());
    for (w, (word, wt)) in words.into_iter().zip(word_tokens).enumerate() {
        let (a, b) = (boundaries[w], boundaries[w + 1]);
        let (Some(&start), Some(&end)) = (jump_times.get(a), jump_times.get(b)) else {
            break;
        };
        let p = &probs[a.min(probs.len())..b.min(probs.len())];
        let probability = if p.is_empty() {
            0.0
        } else {
            p.iter().sum::<f32>() / p.len() as f32
        };
        timings.push(WordTiming {
            word,
            tokens: wt,
            start,
            end,
            probability,
        });
    }
    Ok(timings)
}

/// The alignment heads' weights (`heads × (rows, frames)`) → one `(rows, frames)` matrix:
/// each head standardised per frame over the token rows, median-filtered over frames, then the
/// mean over heads.
pub fn alignment_matrix(weights: &[Vec<f32>], rows: usize, frames: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut acc = vec![0f32; rows * frames];
    if weights.is_empty() || rows == 0 || frames == 0 {
        return acc;
    }
    let per_head: Vec<Vec<f32>> = weights
        .par_iter()
        .map(|w| {
            // Mean and standard deviation of each frame over the rows (population, as torch's
            // `std_mean(unbiased=False)`), accumulated row by row.
            let mut mean = vec![0f64; frames];
            for r in 0..rows {
                mean.iter_mut()
                    .zip(&w[r * frames..][..frames])
                    .for_each(|(m, &x)| *m += x as f64);
            }
            mean.iter_mut().for_each(|m| *m /= rows as f64);
            let mut var = vec![0f64; frames];
            for r in 0..rows {
                var.iter_mut()
                    .zip(&w[r * frames..][..frames])
                    .zip(&mean)
                    .for_each(|((v, &x), m)| *v += (x as f64 - m).powi(2));
            }
            let inv: Vec<f64> = var
                .iter()
                .map(|v| {
                    let std = (v / rows as f64).sqrt();
                    if std > 0.0 {
                        1.0 / std
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut out = Vec::with_capacity(rows * frames);
            let mut row = vec![0f32; frames];
            for r in 0..rows {
                for (f, x) in row.iter_mut().enumerate() {
                    *x = ((w[r * frames + f] as f64 - mean[f]) * inv[f]) as f32;
                }
                out.extend(median_filter(&row, MEDFILT_WIDTH));
            }
            out
        })
        .collect();
    for h in &per_head {
        acc.iter_mut().zip(h).for_each(|(a, &x)| *a += x);
    }
    let n = weights.len() as f32;
    acc.iter_mut().for_each(|a| *a /= n);
    acc
}

/// Median over a sliding window of odd `width`, the edges reflected (`numpy`'s "reflect": the
/// edge sample is not repeated). Signals no longer than half the width are returned as they are.
pub fn median_filter(x: &[f32], width: usize) -> Vec<f32> {
    let pad = width / 2;
    let n = x.len();
    if width < 2 || n <= pad {
        return x.to_vec();
    }
    let at = |i: isize| -> f32 {
        let n = n as isize;
        let j = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        x[j.clamp(0, n - 1) as usize]
    };
    let mut buf = vec![0f32; width];
    (0..n)
        .map(|i| {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = at(i as isize + k as isize - pad as isize);
            }
            *buf.select_nth_unstable_by(pad, f32::total_cmp).1
        })
        .collect()
}

/// Dynamic time warping over a cost matrix `x` `(n, m)`: the monotonic path from (0, 0) to
/// (n−1, m−1) with the least summed cost, as (row indices, column indices). Ties go the way
/// OpenAI's `dtw_cpu` breaks them (diagonal, then up, then left); costs are accumulated in f32
/// as there.
pub fn dtw(x: &[f64], n: usize, m: usize) -> (Vec<usize>, Vec<usize>) {
    if n == 0 || m == 0 {
        return (Vec::new(), Vec::new());
    }
    let w = m + 1;
    let mut cost = vec![f32::INFINITY; (n + 1) * w];
    let mut trace = vec![-1i8; (n + 1) * w];
    cost[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * w + j] = (x[(i - 1) * m + j - 1] + c as f64) as f32;
            trace[i * w + j] = t;
        }
    }
    trace[..=m].fill(2);
    for i in 0..=n {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::with_capacity(n + m);
    while i > 0 || j > 0 {
        path.push((i.saturating_sub(1), j.saturating_sub(1)));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path.into_iter().unzip()
}

/// Text tokens → words and each word's tokens: per character (where a token ends a complete
/// character) for languages written without spaces, else at spaces and punctuation.
pub fn split_to_word_tokens(
    tok: &WhisperTokenizer,
    tokens: &[u32],
    language: &str,
) -> Result<(Vec<String>, Vec<Vec<u32>>), DecodeError> {
    let (subwords, subword_tokens) = split_tokens_on_unicode(tok, tokens)?;
    if NO_SPACE_LANGUAGES.contains(&language) {
        return Ok((subwords, subword_tokens));
    }
    let mut words: Vec<String> = Vec::new();
    let mut word_tokens: Vec<Vec<u32>> = Vec::new();
    for (sub, toks) in subwords.into_iter().zip(subword_tokens) {
        let with_space = sub.starts_with(' ');
        let punctuation = ASCII_PUNCTUATION.contains(sub.trim());
        match (words.last_mut(), word_tokens.last_mut()) {
            (Some(w), Some(t)) if !with_space && !punctuation => {
                w.push_str(&sub);
                t.extend(toks);
            }
            _ => {
                words.push(sub);
                word_tokens.push(toks);
            }
        }
    }
    Ok((words, word_tokens))
}

/// Tokens grouped so that each group decodes to whole characters (a multi-byte character may
/// span tokens).
fn split_tokens_on_unicode(
    tok: &WhisperTokenizer,
    tokens: &[u32],
) -> Result<(Vec<String>, Vec<Vec<u32>>), DecodeError> {
    const REPLACEMENT: char = '\u{fffd}';
    let full: Vec<char> = tok.decode(tokens)?.chars().collect();
    let mut words = Vec::new();
    let mut word_tokens = Vec::new();
    let mut current = Vec::new();
    let mut offset = 0usize;
    for &t in tokens {
        current.push(t);
        let decoded = tok.decode(&current)?;
        let chars: Vec<char> = decoded.chars().collect();
        let complete = match chars.iter().position(|&c| c == REPLACEMENT) {
            None => true,
            Some(p) => full.get(offset + p) == Some(&REPLACEMENT),
        };
        if complete {
            offset += chars.len();
            words.push(decoded);
            word_tokens.push(std::mem::take(&mut current));
        }
    }
    Ok((words, word_tokens))
}

/// Joins punctuation to its neighbour (OpenAI's `merge_punctuations`): an opening mark that is
/// a word of its own goes to the word after it, a closing one to the word before. Emptied
/// entries stay (with no text) so token counts still add up.
pub fn merge_punctuations(alignment: &mut [WordTiming], prepended: &str, appended: &str) {
    let n = alignment.len();
    if n >= 2 {
        let mut j = n - 1;
        for i in (0..n - 1).rev() {
            let prev = &alignment[i];
            if prev.word.starts_with(' ') && contains_word(prepended, prev.word.trim()) {
                let (word, tokens) = (prev.word.clone(), prev.tokens.clone());
                let following = &mut alignment[j];
                following.word = word + &following.word;
                let mut t = tokens;
                t.extend_from_slice(&following.tokens);
                following.tokens = t;
                alignment[i].word.clear();
                alignment[i].tokens.clear();
            } else {
                j = i;
            }
        }
    }
    let mut i = 0;
    for j in 1..n {
        let appends =
            !alignment[i].word.ends_with(' ') && contains_word(appended, &alignment[j].word);
        if appends {
            let (word, tokens) = (alignment[j].word.clone(), alignment[j].tokens.clone());
            alignment[i].word.push_str(&word);
            alignment[i].tokens.extend(tokens);
            alignment[j].word.clear();
            alignment[j].tokens.clear();
        } else {
            i = j;
        }
    }
}

/// Python's `word in text`: a substring test (the empty word is in every text).
fn contains_word(text: &str, word: &str) -> bool {
    text.contains(word)
}

/// A pause is at least this long (seconds) to move word edges (`snap_to_speech`).
const MIN_PAUSE_S: f64 = 0.2;
/// The first word after a pause starting at most this long after it starts at the pause's end.
const MAX_ONSET_LAG_S: f64 = 0.5;
/// A 20-ms step is a pause when its level is within `PAUSE_OVER_FLOOR_DB` of the window's noise
/// floor (its 10th percentile), or `SILENCE_BELOW_SPEECH_DB` under its speech (95th percentile)
/// where the floor is far lower (digital silence); windows whose speech is not
/// `MIN_SPEECH_OVER_FLOOR_DB` over the floor have no pauses.
const PAUSE_OVER_FLOOR_DB: f32 = 3.0;
const SILENCE_BELOW_SPEECH_DB: f32 = 40.0;
const MIN_SPEECH_OVER_FLOOR_DB: f32 = 18.0;
/// Step levels are median-filtered over this many steps (100 ms) first.
const LEVEL_MEDIAN_STEPS: usize = 5;

/// Pauses in one window, `(start, end)` in seconds from the window's start: runs of at least
/// `MIN_PAUSE_S` whose level (mean mel power, per 20-ms step, the alignment's grid) is at the
/// noise floor (see `PAUSE_OVER_FLOOR_DB`). Recordings whose speech is not well over their
/// noise floor have no pauses here.
pub fn pauses(window: &[f32], n_mels: usize, n_frames: usize) -> Vec<(f64, f64)> {
    let end = n_frames.min(N_FRAMES);
    if end <= 1 || n_mels == 0 || window.len() < n_mels * N_FRAMES {
        return Vec::new();
    }
    // A frame's level in dB (up to a constant): its mean power over the bins. Whisper's log-mel
    // is log10(power) / 4 (plus an offset), so one unit is 40 dB.
    let frame = |f: usize| -> f32 {
        let at = |m: usize| window[m * N_FRAMES + f] as f64;
        let top = (0..n_mels).map(at).fold(f64::NEG_INFINITY, f64::max);
        let mean = (0..n_mels)
            .map(|m| 10f64.powf(4.0 * (at(m) - top)))
            .sum::<f64>()
            / n_mels as f64;
        (40.0 * top + 10.0 * mean.log10()) as f32
    };
    let steps: Vec<f32> = (0..end)
        .step_by(2)
        .map(|f| {
            if f + 1 < end {
                (frame(f) + frame(f + 1)) / 2.0
            } else {
                frame(f)
            }
        })
        .collect();
    // A 100-ms median: a click inside a pause, or a soft consonant inside a word, does not
    // split a run.
    let steps = median_filter(&steps, LEVEL_MEDIAN_STEPS);
    let mut sorted = steps.clone();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f32| sorted[((sorted.len() - 1) as f32 * q) as usize];
    let (floor, speech) = (at(0.1), at(0.95));
    if speech - floor < MIN_SPEECH_OVER_FLOOR_DB {
        return Vec::new(); // too noisy (or all speech, or all silence) to tell pauses apart
    }
    // Near the noise floor, or far under the speech where the floor is digital silence.
    let threshold = (floor + PAUSE_OVER_FLOOR_DB).max(speech - SILENCE_BELOW_SPEECH_DB);
    let mut runs = Vec::new();
    let mut start = None;
    for (k, &l) in steps
        .iter()
        .chain(std::iter::once(&f32::INFINITY))
        .enumerate()
    {
        match (l < threshold, start) {
            (true, None) => start = Some(k),
            (false, Some(s)) => {
                let (a, b) = (s as f64 / TOKENS_PER_SECOND, k as f64 / TOKENS_PER_SECOND);
                if b - a >= MIN_PAUSE_S {
                    runs.push((a, b));
                }
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Words do not start or end inside a pause: the alignment spreads a pause over the words on
/// either side of it (a sentence's last word runs on into the silence, the next one starts
/// early), so a word that starts inside a pause starts at its end, and one that ends inside a
/// pause ends at its start. A word wholly inside a pause, or spanning one, is left as it is.
/// The other way round, the first word after a pause that starts a little after it (attention
/// finds a word's middle more surely than its onset) starts where the pause ends: the sound in
/// between belongs to no other word. A window's first word, which DTW always starts at the
/// window's start, starts after any pause it spans.
pub fn snap_to_speech(alignment: &mut [WordTiming], pauses: &[(f64, f64)]) {
    let mut prev_end: Option<f64> = None;
    for w in alignment.iter_mut() {
        // Entries emptied by `merge_punctuations` are gone.
        if w.word.is_empty() {
            continue;
        }
        for &(a, b) in pauses {
            if w.start >= a && w.start < b && w.end > b {
                w.start = b;
            }
            if w.end > a && w.end <= b && w.start < a {
                w.end = a;
            }
            let pause_before = prev_end.is_none_or(|e| e <= a + 1e-6);
            if pause_before && w.start > b && w.start - b <= MAX_ONSET_LAG_S {
                w.start = b;
            }
            // A window's first word always starts at the window's start (where the path
            // begins); one that spans a pause starts after it.
            if prev_end.is_none() && w.start <= a && b < w.end {
                w.start = b;
            }
        }
        prev_end = Some(w.end);
    }
}

/// Rounds to hundredths of a second, as the words are reported.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Puts one window's aligned words on its segments (`segments` all belong to the window that
/// starts at `time_offset` seconds; `pauses` are the window's, see [`snap_to_speech`]), with
/// OpenAI's and faster-whisper's edge heuristics: a
/// sentence-final word, or the first word after a pause, is at most twice the median word
/// length; a segment starts at its first word and ends at its last unless that word is
/// implausibly long. Returns the end of the last speech (`last_speech` carried across windows).
pub fn add_word_timestamps(
    segments: &mut [Segment],
    mut alignment: Vec<WordTiming>,
    time_offset: f64,
    mut last_speech: f64,
    eot: u32,
    pauses: &[(f64, f64)],
) -> f64 {
    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|w| w.end - w.start)
        .filter(|&d| d != 0.0)
        .collect();
    durations.sort_by(f64::total_cmp);
    let median = match durations.len() {
        0 => 0.0,
        n if n % 2 == 1 => durations[n / 2],
        n => (durations[n / 2 - 1] + durations[n / 2]) / 2.0,
    }
    .min(0.7);
    let max_duration = median * 2.0;
    if !durations.is_empty() {
        const SENTENCE_END: &str = ".。!！?？";
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if contains_word(SENTENCE_END, &alignment[i].word) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if contains_word(SENTENCE_END, &alignment[i - 1].word) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);
    snap_to_speech(&mut alignment, pauses);

    let mut next = 0usize;
    for seg in segments.iter_mut() {
        let n_text = seg.tokens.iter().filter(|&&t| t < eot).count();
        let mut saved = 0usize;
        let mut words: Vec<Word> = Vec::new();
        while next < alignment.len() && saved < n_text {
            let t = &alignment[next];
            if !t.word.is_empty() {
                words.push(Word {
                    word: t.word.clone(),
                    start: round2(time_offset + t.start),
                    end: round2(time_offset + t.end),
                    probability: t.probability,
                    speaker: None,
                });
            }
            saved += t.tokens.len();
            next += 1;
        }
        if let (Some(_), Some(_)) = (words.first(), words.last()) {
            let first_long = words[0].end - words[0].start > max_duration;
            let pair_long = words.len() > 1 && words[1].end - words[0].start > max_duration * 2.0;
            if words[0].end - last_speech > median * 4.0 && (first_long || pair_long) {
                if words.len() > 1 && words[1].end - words[1].start > max_duration {
                    let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            if seg.start < words[0].end && seg.start - 0.5 > words[0].start {
                words[0].start = (words[0].end - median).min(seg.start).max(0.0);
            } else {
                seg.start = words[0].start;
            }
            let last = words.len() - 1;
            if seg.end > words[last].start && seg.end + 0.5 < words[last].end {
                words[last].end = (words[last].start + median).max(seg.end);
            } else {
                seg.end = words[last].end;
            }
            last_speech = seg.end;
        }
        seg.words = Some(words);
    }
    last_speech
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_filter_reflects_edges() {
        let x = [5.0, 1.0, 4.0, 2.0, 3.0];
        // reflect pad 1: [1, 5, 1, 4, 2, 3, 2]
        assert_eq!(median_filter(&x, 3), vec![1.0, 4.0, 2.0, 3.0, 2.0]);
        assert_eq!(median_filter(&[1.0, 2.0], 7), vec![1.0, 2.0]);
    }

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // 3 tokens over 6 frames: token k is cheap on frames 2k, 2k+1.
        let (n, m) = (3, 6);
        let mut x = vec![1.0; n * m];
        for k in 0..n {
            x[k * m + 2 * k] = 0.0;
            x[k * m + 2 * k + 1] = 0.0;
        }
        let (rows, cols) = dtw(&x, n, m);
        assert_eq!(rows, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(cols, vec![0, 1, 2, 3, 4, 5]);
    }

    fn w(word: &str) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: vec![1],
            start: 0.0,
            end: 0.0,
            probability: 1.0,
        }
    }

    #[test]
    fn words_move_out_of_pauses() {
        let t = |start: f64, end: f64| WordTiming {
            start,
            end,
            ..w(" x")
        };
        // "her." runs 1 s into a pause at 24.0–25.5; "Oh" starts inside it.
        let mut a = vec![t(23.7, 24.84), t(24.84, 25.68), t(25.68, 25.8)];
        snap_to_speech(&mut a, &[(24.0, 25.5)]);
        assert_eq!((a[0].start, a[0].end), (23.7, 24.0));
        assert_eq!((a[1].start, a[1].end), (25.5, 25.68));
        assert_eq!((a[2].start, a[2].end), (25.68, 25.8));
        // A window's first word spanning a pause starts after it; a later one is left alone.
        let mut a = vec![t(0.0, 1.04), t(1.04, 1.3), t(1.3, 2.5)];
        snap_to_speech(&mut a, &[(0.12, 0.94), (1.5, 2.0)]);
        assert_eq!((a[0].start, a[0].end), (0.94, 1.04));
        assert_eq!((a[2].start, a[2].end), (1.3, 2.5));
        // Wholly inside a pause: left alone.
        let mut a = vec![t(24.2, 24.4)];
        snap_to_speech(&mut a, &[(24.0, 25.5)]);
        assert_eq!((a[0].start, a[0].end), (24.2, 24.4));
        // The first word after a pause, found 0.3 s late, starts at its end; one found 0.8 s
        // late (something else sounds in between) or not right after the pause does not.
        let mut a = vec![t(4.0, 5.0), t(6.3, 6.6), t(6.6, 7.0)];
        snap_to_speech(&mut a, &[(5.0, 6.0)]);
        assert_eq!((a[1].start, a[2].start), (6.0, 6.6));
        let mut a = vec![t(4.0, 5.0), t(6.8, 7.0)];
        snap_to_speech(&mut a, &[(5.0, 6.0)]);
        assert_eq!(a[1].start, 6.8);
    }

    #[test]
    fn pauses_are_long_quiet_runs() {
        // 2 s: loud, 0.5 s near-silent (60 dB under), loud, 0.1 s quiet (too short), loud.
        let n_mels = 4;
        let loud = 1.0f32;
        let quiet = loud - 1.5; // 60 dB under
        let frames: Vec<f32> = (0..200)
            .map(|f| match f {
                50..100 => quiet,
                150..160 => quiet,
                _ => loud,
            })
            .collect();
        // a window of `[n_mels][N_FRAMES]` from frame `seek`, each value through `f`
        let window = |seek: usize, f: &dyn Fn(f32) -> f32| -> Vec<f32> {
            let mut w = vec![0f32; n_mels * N_FRAMES];
            for m in 0..n_mels {
                for (i, &x) in frames[seek..].iter().enumerate() {
                    w[m * N_FRAMES + i] = f(x);
                }
            }
            w
        };
        assert_eq!(pauses(&window(0, &|x| x), n_mels, 200), vec![(0.5, 1.0)]);
        // Offsets are relative to the window's start.
        assert_eq!(pauses(&window(40, &|x| x), n_mels, 160), vec![(0.1, 0.6)]);
        // Pauses under steady noise 30 dB below the speech are found at the noise floor…
        let noisy = window(0, &|x| x.max(loud - 0.75));
        assert_eq!(pauses(&noisy, n_mels, 200), vec![(0.5, 1.0)]);
        // …but not under noise 12 dB below it: too close to tell.
        let noisy = window(0, &|x| x.max(loud - 0.3));
        assert!(pauses(&noisy, n_mels, 200).is_empty());
    }

    #[test]
    fn punctuation_joins_its_neighbours() {
        let mut a = vec![w(" \""), w(" Hello"), w(","), w(" world"), w(".")];
        merge_punctuations(&mut a, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);
        let words: Vec<&str> = a.iter().map(|t| t.word.as_str()).collect();
        assert_eq!(words, vec!["", " \" Hello,", "", " world.", ""]);
        assert_eq!(a[1].tokens.len(), 3);
    }
}
