//! From speech regions to speaker turns: where the embedding windows go, how their labels become
//! turns on the timeline (with short flips smoothed away), and which speaker a stretch of time
//! (a transcript segment, a word) belongs to.

use std::ops::Range;

/// A stretch of one speaker's speech, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    pub start: f64,
    pub end: f64,
    pub speaker: usize,
}

/// Window starts (in samples) covering the speech `regions` of a recording `total` samples
/// long: every `hop` from a region's start while a window of `window` fits inside it, and the
/// region's last window flush with its end; a region shorter than a window gets one window
/// centred on it (kept inside the recording). Sorted, no repeats.
pub fn window_starts(
    regions: &[Range<usize>],
    total: usize,
    window: usize,
    hop: usize,
) -> Vec<usize> {
    let hop = hop.max(1);
    let mut starts = Vec::new();
    for r in regions {
        let (s, e) = (r.start.min(total), r.end.min(total));
        if e <= s {
            continue;
        }
        if e - s <= window {
            let centre = (s + e) / 2;
            starts.push(
                centre
                    .saturating_sub(window / 2)
                    .min(total.saturating_sub(window)),
            );
            continue;
        }
        let mut t = s;
        while t + window <= e {
            starts.push(t);
            t += hop;
        }
        if starts.last().is_some_and(|&l| l + window < e) {
            starts.push(e - window);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// Speaker turns from one label per window (`starts` in samples at `rate`): each window speaks
/// for the `hop` around its centre, runs of fewer than `min_run` windows between two runs of
/// the same speaker take that speaker (a flip too short to be a turn), and neighbouring
/// windows of one speaker less than `max_gap` seconds apart join into one turn.
pub fn turns(
    starts: &[usize],
    labels: &[usize],
    rate: usize,
    window: usize,
    hop: usize,
    min_run: usize,
    max_gap: f64,
) -> Vec<Turn> {
    let n = starts.len().min(labels.len());
    let mut labels = labels[..n].to_vec();
    // Smooth: runs (start, len) of equal labels.
    let mut r: Vec<(usize, usize)> = Vec::new();
    for (i, &x) in labels.iter().enumerate() {
        match r.last_mut() {
            Some((s, len)) if labels[*s] == x => *len += 1,
            _ => r.push((i, 1)),
        }
    }
    for k in 1..r.len().saturating_sub(1) {
        let (s, len) = r[k];
        let (before, after) = (labels[r[k - 1].0], labels[r[k + 1].0]);
        if len < min_run && before == after {
            labels[s..s + len].fill(before);
        }
    }
    let sec = |samples: f64| samples / rate as f64;
    let half_hop = hop as f64 / 2.0;
    let mut out: Vec<Turn> = Vec::new();
    for i in 0..n {
        let centre = starts[i] as f64 + window as f64 / 2.0;
        let (start, end) = (sec((centre - half_hop).max(0.0)), sec(centre + half_hop));
        match out.last_mut() {
            Some(t) if t.speaker == labels[i] && start - t.end < max_gap => t.end = t.end.max(end),
            Some(t) if start < t.end => {
                // the other speaker's window begins inside this turn: meet halfway
                let mid = (start + t.end) / 2.0;
                t.end = mid;
                out.push(Turn {
                    start: mid,
                    end,
                    speaker: labels[i],
                });
            }
            _ => out.push(Turn {
                start,
                end,
                speaker: labels[i],
            }),
        }
    }
    out
}

/// The speaker who talks most during `[start, end)` among `turns`; `None` when no turn
/// overlaps it (then the nearest turn's speaker, if `nearest` is set).
pub fn speaker_of(turns: &[Turn], start: f64, end: f64, nearest: bool) -> Option<usize> {
    let mut talk: Vec<(usize, f64)> = Vec::new();
    for t in turns {
        let o = t.end.min(end) - t.start.max(start);
        if o > 0.0 {
            match talk.iter_mut().find(|(s, _)| *s == t.speaker) {
                Some((_, d)) => *d += o,
                None => talk.push((t.speaker, o)),
            }
        }
    }
    if let Some(&(s, _)) = talk.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        return Some(s);
    }
    if !nearest {
        return None;
    }
    let gap = |t: &Turn| {
        if t.end <= start {
            start - t.end
        } else {
            t.start - end
        }
    };
    turns
        .iter()
        .min_by(|a, b| gap(a).total_cmp(&gap(b)))
        .map(|t| t.speaker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_each_region_and_fit_short_ones() {
        // 10 s recording at 100 Hz: a 5-s region, a 0.5-s one, one past the end
        let w = window_starts(&[0..500, 700..750, 950..2000], 1000, 160, 80);
        assert_eq!(&w[..5], [0, 80, 160, 240, 320]);
        assert!(w.contains(&340), "flush with the region's end: {w:?}");
        assert!(w.contains(&645), "centred on the short region: {w:?}");
        assert!(w.contains(&840), "kept inside the recording: {w:?}");
        assert!(w.windows(2).all(|p| p[0] < p[1]));
        assert!(window_starts(std::slice::from_ref(&(5..5)), 1000, 160, 80).is_empty());
    }

    #[test]
    fn labels_become_turns_and_short_flips_are_smoothed() {
        // windows every 0.4 s (hop 40 at 100 Hz, window 160)
        let starts: Vec<usize> = (0..12).map(|i| i * 40).collect();
        let labels = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1];
        let t = turns(&starts, &labels, 100, 160, 40, 2, 0.5);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!((t[0].speaker, t[1].speaker), (0, 1));
        assert!(
            (t[0].start - 0.6).abs() < 1e-9 && (t[1].end - 5.4).abs() < 1e-9,
            "{t:?}"
        );
        assert!((t[0].end - t[1].start).abs() < 1e-9, "contiguous: {t:?}");
        // a real turn of two windows stays
        let labels = [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(turns(&starts, &labels, 100, 160, 40, 2, 0.5).len(), 3);
        // a long gap between windows of one speaker splits the turn
        let t = turns(&[0, 40, 1000, 1040], &[0, 0, 0, 0], 100, 160, 40, 2, 0.5);
        assert_eq!(t.len(), 2, "{t:?}");
    }

    #[test]
    fn a_segment_belongs_to_who_talks_most_in_it() {
        let t = [
            Turn {
                start: 0.0,
                end: 4.0,
                speaker: 0,
            },
            Turn {
                start: 4.0,
                end: 6.0,
                speaker: 1,
            },
            Turn {
                start: 8.0,
                end: 9.0,
                speaker: 2,
            },
        ];
        assert_eq!(speaker_of(&t, 3.0, 6.5, false), Some(1));
        assert_eq!(speaker_of(&t, 1.0, 4.5, false), Some(0));
        assert_eq!(speaker_of(&t, 6.5, 7.0, false), None);
        assert_eq!(speaker_of(&t, 6.5, 7.0, true), Some(1));
        assert_eq!(speaker_of(&t, 7.6, 7.9, true), Some(2));
        assert_eq!(speaker_of(&[], 0.0, 1.0, true), None);
    }
}
