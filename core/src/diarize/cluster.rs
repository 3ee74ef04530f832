//! Grouping voice embeddings into speakers: agglomerative clustering with average linkage over
//! cosine distance, built by the nearest-neighbour chain (O(n²) time and memory, exact for
//! average linkage), then cut at a distance threshold or at a given number of speakers.

/// How many speakers to find.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterOptions {
    /// Clusters closer than this (1 − cosine, average linkage) are one speaker.
    pub threshold: f32,
    /// Exactly this many speakers (overrides the threshold).
    pub num_speakers: Option<usize>,
    /// The threshold's count is kept within these bounds.
    pub min_speakers: usize,
    pub max_speakers: usize,
}

/// One merge of the dendrogram: clusters `a` and `b` (indices into the growing cluster list)
/// at distance `height`.
#[derive(Debug, Clone, Copy)]
struct Merge {
    a: usize,
    b: usize,
    height: f32,
}

/// A speaker label per embedding, numbered in order of first appearance (0, 1, …).
/// Embeddings need not be normalised. Empty in, empty out.
pub fn cluster(embeddings: &[Vec<f32>], o: &ClusterOptions) -> Vec<usize> {
    let n = embeddings.len();
    if n == 0 {
        return Vec::new();
    }
    let merges = dendrogram(embeddings);
    let speakers = match o.num_speakers {
        Some(k) => k,
        None => {
            let joined = merges.iter().filter(|m| m.height < o.threshold).count();
            (n - joined).clamp(o.min_speakers.max(1), o.max_speakers.max(1))
        }
    }
    .clamp(1, n);
    // Apply the lowest n − speakers merges (average linkage has no inversions, so this is a cut
    // of the tree).
    let mut parent: Vec<usize> = (0..2 * n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for (i, m) in merges.iter().enumerate().take(n - speakers) {
        let new = n + i;
        let (ra, rb) = (find(&mut parent, m.a), find(&mut parent, m.b));
        parent[ra] = new;
        parent[rb] = new;
    }
    let mut names: Vec<(usize, usize)> = Vec::new();
    (0..n)
        .map(|i| {
            let root = find(&mut parent, i);
            match names.iter().find(|(r, _)| *r == root) {
                Some(&(_, label)) => label,
                None => {
                    names.push((root, names.len()));
                    names.len() - 1
                }
            }
        })
        .collect()
}

/// The merges of average-linkage clustering, lowest first; cluster `n + i` is merge `i`'s.
fn dendrogram(embeddings: &[Vec<f32>]) -> Vec<Merge> {
    let n = embeddings.len();
    let unit: Vec<Vec<f32>> = embeddings
        .iter()
        .map(|e| {
            let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            e.iter().map(|x| x / norm).collect()
        })
        .collect();
    // Distances between live clusters, indexed by slot; a merged pair keeps the lower slot.
    let mut d = vec![0f32; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let c: f32 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
            let v = 1.0 - c;
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    let mut size = vec![1usize; n];
    let mut alive = vec![true; n];
    // Which cluster (in the 0..2n−1 numbering) each slot holds now.
    let mut id: Vec<usize> = (0..n).collect();
    let mut merges: Vec<Merge> = Vec::with_capacity(n.saturating_sub(1));
    let mut chain: Vec<usize> = Vec::new();
    let mut left = n;
    while left > 1 {
        if chain.is_empty() {
            chain.push(alive.iter().position(|&a| a).unwrap_or(0));
        }
        let a = chain[chain.len() - 1];
        let prev = chain.len().checked_sub(2).map(|i| chain[i]);
        // a's nearest live neighbour (ties go to the chain's previous element, so it ends).
        let mut best = usize::MAX;
        let mut best_d = f32::INFINITY;
        for b in 0..n {
            if b != a && alive[b] {
                let v = d[a * n + b];
                if v < best_d || (v == best_d && Some(b) == prev) {
                    best = b;
                    best_d = v;
                }
            }
        }
        if Some(best) == prev {
            chain.pop();
            chain.pop();
            let (lo, hi) = (a.min(best), a.max(best));
            merges.push(Merge {
                a: id[lo],
                b: id[hi],
                height: best_d,
            });
            // Lance–Williams update for average linkage, into the lower slot.
            for k in 0..n {
                if alive[k] && k != lo && k != hi {
                    let v = (size[lo] as f32 * d[lo * n + k] + size[hi] as f32 * d[hi * n + k])
                        / (size[lo] + size[hi]) as f32;
                    d[lo * n + k] = v;
                    d[k * n + lo] = v;
                }
            }
            size[lo] += size[hi];
            alive[hi] = false;
            id[lo] = n + merges.len() - 1;
            left -= 1;
        } else {
            chain.push(best);
        }
    }
    // Lowest first; renumber the merged clusters to their merge's new position.
    let mut order: Vec<usize> = (0..merges.len()).collect();
    order.sort_by(|&x, &y| merges[x].height.total_cmp(&merges[y].height));
    let mut new_pos = vec![0usize; merges.len()];
    for (pos, &old) in order.iter().enumerate() {
        new_pos[old] = pos;
    }
    let renumber = |c: usize| if c < n { c } else { n + new_pos[c - n] };
    order
        .iter()
        .map(|&i| Merge {
            a: renumber(merges[i].a),
            b: renumber(merges[i].b),
            height: merges[i].height,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per` noisy copies of each of `centres` random directions, interleaved.
    fn voices(centres: usize, per: usize, noise: f32) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 10_000) as f32 / 5_000.0 - 1.0
        };
        let dirs: Vec<Vec<f32>> = (0..centres)
            .map(|_| (0..64).map(|_| rnd()).collect())
            .collect();
        let mut e = Vec::new();
        let mut truth = Vec::new();
        for i in 0..per {
            for (c, dir) in dirs.iter().enumerate() {
                e.push(dir.iter().map(|x| x + noise * rnd()).collect());
                truth.push(c);
                let _ = i;
            }
        }
        (e, truth)
    }

    fn opts(threshold: f32) -> ClusterOptions {
        ClusterOptions {
            threshold,
            num_speakers: None,
            min_speakers: 1,
            max_speakers: 32,
        }
    }

    #[test]
    fn finds_the_speakers_and_names_them_in_order_of_appearance() {
        let (e, truth) = voices(3, 20, 0.3);
        let labels = cluster(&e, &opts(0.5));
        assert_eq!(labels, truth, "three well-separated voices");
        assert_eq!(&labels[..3], [0, 1, 2]);
    }

    #[test]
    fn a_given_count_wins_and_bounds_clamp_the_threshold() {
        let (e, _) = voices(3, 10, 0.3);
        let count = |l: &[usize]| l.iter().max().map_or(0, |m| m + 1);
        let mut o = opts(0.5);
        o.num_speakers = Some(2);
        assert_eq!(count(&cluster(&e, &o)), 2);
        o.num_speakers = Some(100);
        assert_eq!(
            count(&cluster(&e, &o)),
            e.len(),
            "at most one per embedding"
        );
        let mut o = opts(2.5); // everything joins…
        o.min_speakers = 2; // …unless at least two are asked for
        assert_eq!(count(&cluster(&e, &o)), 2);
        let mut o = opts(0.0); // nothing joins…
        o.max_speakers = 4;
        assert_eq!(count(&cluster(&e, &o)), 4);
    }

    #[test]
    fn tiny_inputs() {
        assert!(cluster(&[], &opts(0.5)).is_empty());
        assert_eq!(cluster(&[vec![1.0, 0.0]], &opts(0.5)), [0]);
        assert_eq!(
            cluster(&[vec![1.0, 0.0], vec![0.0, 1.0]], &opts(0.5)),
            [0, 1]
        );
        assert_eq!(
            cluster(&[vec![1.0, 0.0], vec![0.9, 0.1]], &opts(0.5)),
            [0, 0]
        );
        // zero vectors do not panic
        assert_eq!(cluster(&[vec![0.0; 4], vec![0.0; 4]], &opts(0.5)).len(), 2);
    }

    #[test]
    fn the_chain_agrees_with_naive_average_linkage() {
        let (e, _) = voices(4, 6, 0.8);
        let got: Vec<f32> = dendrogram(&e).iter().map(|m| m.height).collect();
        // Naive: merge the closest pair of clusters, average of all cross distances.
        let mut clusters: Vec<Vec<usize>> = (0..e.len()).map(|i| vec![i]).collect();
        let dist = |a: usize, b: usize| {
            let dot: f32 = e[a].iter().zip(&e[b]).map(|(x, y)| x * y).sum();
            let na: f32 = e[a].iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = e[b].iter().map(|x| x * x).sum::<f32>().sqrt();
            1.0 - dot / (na * nb)
        };
        let mut want = Vec::new();
        while clusters.len() > 1 {
            let mut best = (0, 1, f32::INFINITY);
            for i in 0..clusters.len() {
                for j in i + 1..clusters.len() {
                    let mut s = 0.0;
                    for &a in &clusters[i] {
                        for &b in &clusters[j] {
                            s += dist(a, b);
                        }
                    }
                    let v = s / (clusters[i].len() * clusters[j].len()) as f32;
                    if v < best.2 {
                        best = (i, j, v);
                    }
                }
            }
            want.push(best.2);
            let merged = clusters.remove(best.1);
            clusters[best.0].extend(merged);
        }
        want.sort_by(f32::total_cmp);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "heights {got:?} vs {want:?}");
        }
    }
}
