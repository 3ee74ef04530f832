//! Attention for the decoder's few query rows: self-attention over the KV cache and
//! cross-attention over the window's audio keys/values (f32, or fp16 bits under q8).

use crate::elementwise::{dot, softmax_in_place};
use crate::isa::Tier;
#[cfg(target_arch = "x86_64")]
use crate::simd::{Avx2, Avx512, Simd};

/// Attention for the decoder queries of one sequence, one `(query row, head)` pair per call (the
/// caller runs the pairs of every sequence of a step in one parallel region). `q` is
/// `(n, heads·dh)`, already scaled by dh^-0.5; each call writes one `dh`-long output.
pub struct QueryAttention<'a> {
    pub q: &'a [f32],
    pub heads: usize,
    pub dh: usize,
}

impl QueryAttention<'_> {
    fn query(&self, row: usize, h: usize) -> &[f32] {
        &self.q[row * self.heads * self.dh + h * self.dh..][..self.dh]
    }

    /// Self-attention over a cache of `(tokens, heads·dh)` keys and values; query row `row` sees
    /// keys `0 ..= first + row` (causal). The cache may be split (see [`CacheRows`]): the same
    /// arithmetic, in the same order, as over the two parts laid end to end.
    pub fn cache_head(
        &self,
        row: usize,
        h: usize,
        k: CacheRows,
        v: CacheRows,
        first: usize,
        out: &mut [f32],
    ) {
        self.cache_head_on(Tier::best(), row, h, k, v, first, out)
    }

    /// [`QueryAttention::cache_head`] on the kernels of `tier` (one of [`Tier::available`]).
    #[allow(clippy::too_many_arguments)]
    pub fn cache_head_on(
        &self,
        tier: Tier,
        row: usize,
        h: usize,
        k: CacheRows,
        v: CacheRows,
        first: usize,
        out: &mut [f32],
    ) {
        let stride = self.heads * self.dh;
        self_head_on(
            tier,
            self.query(row, h),
            k,
            v,
            first + row + 1,
            stride,
            h * self.dh,
            out,
        );
    }

    /// Cross-attention to audio keys stored transposed per head `(heads, dh, n_audio)` and values
    /// `(heads, n_audio, dh)`, as f32 or as fp16 bits (q8).
    pub fn audio_head<T: AudioValue>(
        &self,
        row: usize,
        h: usize,
        kt: &[T],
        v: &[T],
        n_audio: usize,
        out: &mut [f32],
    ) {
        self.audio_head_on(Tier::best(), row, h, kt, v, n_audio, out)
    }

    /// [`QueryAttention::audio_head`] on the kernels of `tier` (one of [`Tier::available`]).
    #[allow(clippy::too_many_arguments)]
    pub fn audio_head_on<T: AudioValue>(
        &self,
        tier: Tier,
        row: usize,
        h: usize,
        kt: &[T],
        v: &[T],
        n_audio: usize,
        out: &mut [f32],
    ) {
        let block = self.dh * n_audio;
        T::cross_head_on(
            tier,
            self.query(row, h),
            &kt[h * block..][..block],
            &v[h * block..][..block],
            n_audio,
            out,
        );
    }
}

/// A sequence's cached keys (or values), `(tokens, heads·dh)` row-major, in two parts: rows
/// shared with other sequences (the start sequence every beam of a window has in common, held
/// once), then the sequence's own rows. A plain cache is all `own`.
#[derive(Debug, Clone, Copy)]
pub struct CacheRows<'a> {
    pub shared: &'a [f32],
    pub own: &'a [f32],
}

impl<'a> CacheRows<'a> {
    /// A cache that is all the sequence's own.
    pub fn own(rows: &'a [f32]) -> Self {
        Self {
            shared: &[],
            own: rows,
        }
    }

    /// Row `j`'s `len` values from column `offset`.
    #[inline(always)]
    fn row(&self, j: usize, stride: usize, offset: usize, len: usize) -> &'a [f32] {
        let n_shared = self.shared.len() / stride;
        if j < n_shared {
            &self.shared[j * stride + offset..][..len]
        } else {
            &self.own[(j - n_shared) * stride + offset..][..len]
        }
    }
}

/// How audio keys/values are stored: f32, or fp16 bits (half the memory traffic per step).
pub trait AudioValue: Sized {
    fn cross_head_on(tier: Tier, q: &[f32], kt: &[Self], v: &[Self], n: usize, out: &mut [f32]);
    /// Several query rows against the same keys/values, `out` `(rows, dh)`: each row bit for
    /// bit what [`AudioValue::cross_head_on`] gives it alone, the keys and values read once.
    fn cross_rows_on(tier: Tier, qs: &[&[f32]], kt: &[Self], v: &[Self], n: usize, out: &mut [f32]);
}

impl AudioValue for f32 {
    fn cross_head_on(tier: Tier, q: &[f32], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
        cross_head_on(tier, q, kt, v, n, out)
    }
    fn cross_rows_on(tier: Tier, qs: &[&[f32]], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
        let dh = qs.first().map_or(0, |q| q.len());
        assert!(kt.len() >= dh * n && v.len() >= dh * n && out.len() >= qs.len() * dh);
        cross_rows_on(tier, qs, kt, v, n, out)
    }
}

impl AudioValue for u16 {
    fn cross_head_on(tier: Tier, q: &[f32], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
        cross_head_f16_on(tier, q, kt, v, n, out)
    }
    fn cross_rows_on(tier: Tier, qs: &[&[f32]], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
        cross_rows_f16_on(tier, qs, kt, v, n, out)
    }
}

/// Cross-attention of several query rows (`qs`, each `dh` long, already scaled) over one head's
/// audio keys (transposed, `(dh, n_audio)`) and values (`(n_audio, dh)`), writing `out`
/// `(rows, dh)`. The rows of one window (a beam search's lanes, a start sequence) share its
/// audio: read once for all of them instead of once per row, with each row's numbers exactly
/// those of [`QueryAttention::audio_head`].
pub fn audio_rows<T: AudioValue>(
    qs: &[&[f32]],
    kt: &[T],
    v: &[T],
    n_audio: usize,
    out: &mut [f32],
) {
    audio_rows_on(Tier::best(), qs, kt, v, n_audio, out)
}

/// [`audio_rows`] on the kernels of `tier` (one of [`Tier::available`]).
pub fn audio_rows_on<T: AudioValue>(
    tier: Tier,
    qs: &[&[f32]],
    kt: &[T],
    v: &[T],
    n_audio: usize,
    out: &mut [f32],
) {
    if let [q] = qs {
        return T::cross_head_on(tier, q, kt, v, n_audio, out);
    }
    T::cross_rows_on(tier, qs, kt, v, n_audio, out)
}

/// [`AudioValue::cross_rows_on`] for fp16 keys/values: each row the arithmetic it gets alone
/// from [`cross_head_f16_on`], with the keys and values read once for all rows.
fn cross_rows_f16_on(tier: Tier, qs: &[&[f32]], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    let dh = qs.first().map_or(0, |q| q.len());
    assert!(
        kt.len() >= dh * n
            && v.len() >= dh * n
            && out.len() >= qs.len() * dh
            && qs.iter().all(|q| q.len() == dh)
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both): the tier's features were detected (`Tier::available`); the lengths
        // were checked above and the head size here.
        if tier >= Tier::Avx512 && fits::<Avx512>(dh) {
            return unsafe { cross_rows_f16_avx512(qs, kt, v, n, out) };
        }
        if tier >= Tier::Avx2 && fits::<Avx2>(dh) {
            return unsafe { cross_rows_f16_avx2(qs, kt, v, n, out) };
        }
    }
    let _ = tier;
    for (q, o) in qs.iter().zip(out.chunks_exact_mut(dh.max(1))) {
        cross_head_f16_portable(q, kt, v, n, o);
    }
}

/// Whether a head of `dh` values suits `S`'s kernel: whole vectors, at most `MAX_ACC` of them.
#[cfg(target_arch = "x86_64")]
fn fits<S: Simd>(dh: usize) -> bool {
    dh.is_multiple_of(S::LANES) && dh <= MAX_ACC * S::LANES
}

/// Value accumulators per row (vectors of `S::LANES`): a head of up to 64 (AVX2) or 128
/// (AVX-512) values.
#[cfg(target_arch = "x86_64")]
const MAX_ACC: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cross_rows_f16_avx512(qs: &[&[f32]], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    cross_rows_f16_simd::<Avx512>(qs, kt, v, n, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn cross_rows_f16_avx2(qs: &[&[f32]], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    cross_rows_f16_simd::<Avx2>(qs, kt, v, n, out)
}

/// `cross_head`'s arithmetic over fp16 keys/values for several query rows, written once for
/// every vector width: scores two key rows per pass (`s = q₁k₁ + (q₀k₀ + s)`, the sums of one
/// row per pass with half the loads and stores of the scores), each key and value vector
/// converted once for all rows; per row the same instructions in the same order, so a row's
/// bits do not depend on the others.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn cross_rows_f16_simd<S: Simd>(
    qs: &[&[f32]],
    kt: &[u16],
    v: &[u16],
    n: usize,
    out: &mut [f32],
) {
    let dh = qs[0].len();
    let rows = qs.len();
    let w = S::LANES;
    let nw = n / w * w;
    let mut scores = vec![0f32; rows * n];
    let mut d = 0;
    while d < dh {
        let pair = d + 1 < dh;
        let (r0, r1) = (
            kt.as_ptr().add(d * n),
            kt.as_ptr().add((d + pair as usize) * n),
        );
        let mut j = 0;
        while j < nw {
            let (k0, k1) = (S::load_f16(r0.add(j)), S::load_f16(r1.add(j)));
            for (r, q) in qs.iter().enumerate() {
                let (q0, q1) = (S::splat(q[d]), S::splat(if pair { q[d + 1] } else { 0.0 }));
                let s = scores.as_mut_ptr().add(r * n + j);
                let acc = S::fmadd(q0, k0, S::load(s));
                S::store(s, S::fmadd(q1, k1, acc));
            }
            j += w;
        }
        for (r, q) in qs.iter().enumerate() {
            for (j, sc) in scores[r * n..][..n].iter_mut().enumerate().skip(nw) {
                *sc += q[d] * half::f16::from_bits(*r0.add(j)).to_f32();
                if pair {
                    *sc += q[d + 1] * half::f16::from_bits(*r1.add(j)).to_f32();
                }
            }
        }
        d += 2;
    }
    for row in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(row);
    }
    let lanes = dh / w;
    let mut acc = vec![[S::zero(); MAX_ACC]; rows];
    for j in 0..n {
        let row = v.as_ptr().add(j * dh);
        for c in 0..lanes {
            let vv = S::load_f16(row.add(c * w));
            for (r, a) in acc.iter_mut().enumerate() {
                a[c] = S::fmadd(S::splat(scores[r * n + j]), vv, a[c]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate().take(lanes) {
            S::store(out.as_mut_ptr().add(r * dh + c * w), *x);
        }
    }
}

/// `cross_head_f16` on the kernels of `tier` (one of `Tier::available`).
pub fn cross_head_f16_on(tier: Tier, q: &[f32], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    cross_rows_f16_on(tier, &[q], kt, v, n, out)
}

/// The portable `cross_head_f16`: plain Rust, one row.
fn cross_head_f16_portable(q: &[f32], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    let f = |b: u16| half::f16::from_bits(b).to_f32();
    let dh = q.len();
    let mut scores = vec![0f32; n];
    for d in 0..dh {
        for (s, &k) in scores.iter_mut().zip(&kt[d * n..][..n]) {
            *s += q[d] * f(k);
        }
    }
    softmax_in_place(&mut scores);
    let out = &mut out[..dh];
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &vv) in out.iter_mut().zip(&v[j * dh..][..dh]) {
            *o += p * f(vv);
        }
    }
}

kernel!(pub fn self_head / self_head_on(q: &[f32], k: CacheRows, v: CacheRows, keys: usize, stride: usize, offset: usize, out: &mut [f32]) {
    let dh = q.len();
    let mut scores = Vec::with_capacity(keys);
    for j in 0..keys {
        scores.push(dot(q, k.row(j, stride, offset, dh)));
    }
    softmax_in_place(&mut scores);
    let out = &mut out[..dh];
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        // Zipped, not indexed: with bounds checks in the loop the compiler left half of each row
        // to a scalar tail (half of this kernel's time).
        for (o, &x) in out.iter_mut().zip(v.row(j, stride, offset, dh)) {
            *o += p * x;
        }
    }
});

kernel!(pub fn cross_head / cross_head_on(q: &[f32], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
    let dh = q.len();
    // scores = q · Kᵀ as dh row updates of length n: no horizontal sums.
    let mut scores = vec![0f32; n];
    for d in 0..dh {
        let qd = q[d];
        for (s, &kv) in scores.iter_mut().zip(&kt[d * n..][..n]) {
            *s += qd * kv;
        }
    }
    softmax_in_place(&mut scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &vv) in out.iter_mut().zip(&v[j * dh..][..dh]) {
            *o += p * vv;
        }
    }
});

kernel!(#[allow(dead_code)] fn cross_rows / cross_rows_on(qs: &[&[f32]], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
    // Per row exactly `cross_head`'s operations in its order; the key row `d` (and value row
    // `j`) is read once for every query row.
    let rows = qs.len();
    let dh = qs.first().map_or(0, |q| q.len());
    let mut scores = vec![0f32; rows * n];
    for d in 0..dh {
        let krow = &kt[d * n..][..n];
        for (r, q) in qs.iter().enumerate() {
            let qd = q[d];
            for (s, &kv) in scores[r * n..][..n].iter_mut().zip(krow) {
                *s += qd * kv;
            }
        }
    }
    for row in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(row);
    }
    out[..rows * dh].fill(0.0);
    for j in 0..n {
        let vj = &v[j * dh..][..dh];
        for r in 0..rows {
            let p = scores[r * n + j];
            for (o, &vv) in out[r * dh..][..dh].iter_mut().zip(vj) {
                *o += p * vv;
            }
        }
    }
});

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// fp16-stored audio keys/values (q8) give what the f32 kernel gives on the same values, on
    /// the portable f32 kernel gives on the same values, for lengths that are and are not a
    /// multiple of the lanes and two query rows (harness).
    pub(crate) fn audio_f16(tier: Tier) {
        for n in [37, 1500] {
            audio_attention_over_f16_matches_f32_on(tier, n);
        }
        let (dh, n) = (64, 77);
        let kt: Vec<u16> = crate::test_values(dh * n, 21)
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        let v: Vec<u16> = crate::test_values(dh * n, 22)
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        rows_equal_single_rows(tier, &kt, &v, dh, n);
    }

    /// Several rows at once give every row's single-row result, bit for bit, for 1 to 6 rows.
    fn rows_equal_single_rows<T: AudioValue>(tier: Tier, kt: &[T], v: &[T], dh: usize, n: usize) {
        let q = crate::test_values(6 * dh, 23);
        for rows in 1..=6 {
            let qs: Vec<&[f32]> = q.chunks_exact(dh).take(rows).collect();
            let mut together = vec![0f32; rows * dh];
            audio_rows_on(tier, &qs, kt, v, n, &mut together);
            for (r, qr) in qs.iter().enumerate() {
                let mut alone = vec![0f32; dh];
                T::cross_head_on(tier, qr, kt, v, n, &mut alone);
                assert_eq!(
                    &together[r * dh..][..dh],
                    &alone[..],
                    "{tier:?}: row {r} of {rows}"
                );
            }
        }
    }

    /// f32 audio keys/values and the causal self-attention over a cache, against the portable
    /// version (harness).
    pub(crate) fn audio_f32_and_cache(tier: Tier) {
        let (heads, dh, n) = (3, 64, 77);
        let q = crate::test_values(2 * heads * dh, 11);
        let kt = crate::test_values(heads * dh * n, 12);
        let v = crate::test_values(heads * dh * n, 13);
        rows_equal_single_rows(tier, &kt[..dh * n], &v[..dh * n], dh, n);
        let qa = QueryAttention { q: &q, heads, dh };
        let (mut a, mut b) = (vec![0f32; dh], vec![0f32; dh]);
        for row in 0..2 {
            for h in 0..heads {
                qa.audio_head_on(tier, row, h, &kt, &v, n, &mut a);
                qa.audio_head_on(Tier::Portable, row, h, &kt, &v, n, &mut b);
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-5,
                    "{tier:?} audio row {row} head {h}: max diff {diff}"
                );
                // A cache of 40 tokens of (heads·dh), the query at position 30 + row.
                let (k, vv) = (CacheRows::own(&kt), CacheRows::own(&v));
                qa.cache_head_on(tier, row, h, k, vv, 30, &mut a);
                qa.cache_head_on(Tier::Portable, row, h, k, vv, 30, &mut b);
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-5,
                    "{tier:?} cache row {row} head {h}: max diff {diff}"
                );
                // The same cache split after 13 rows (a shared prefix): bit for bit the same.
                fn split(x: &[f32], cut: usize) -> CacheRows<'_> {
                    CacheRows {
                        shared: &x[..cut],
                        own: &x[cut..],
                    }
                }
                let cut = 13 * heads * dh;
                let mut c = vec![0f32; dh];
                qa.cache_head_on(tier, row, h, split(&kt, cut), split(&v, cut), 30, &mut c);
                qa.cache_head_on(tier, row, h, k, vv, 30, &mut a);
                assert_eq!(a, c, "{tier:?} split cache row {row} head {h}");
            }
        }
    }

    fn audio_attention_over_f16_matches_f32_on(tier: Tier, n: usize) {
        let (heads, dh) = (2, 64);
        let h = |i: usize, m: usize| half::f16::from_f32(((i * m) % 1000) as f32 / 500.0 - 1.0);
        let kt16: Vec<u16> = (0..heads * dh * n).map(|i| h(i, 7919).to_bits()).collect();
        let v16: Vec<u16> = (0..heads * dh * n)
            .map(|i| h(i, 104729).to_bits())
            .collect();
        let f = |b: &Vec<u16>| -> Vec<f32> {
            b.iter()
                .map(|&x| half::f16::from_bits(x).to_f32())
                .collect()
        };
        let q: Vec<f32> = (0..2 * heads * dh)
            .map(|i| (i % 17) as f32 / 17.0 - 0.5)
            .collect();
        let qa = QueryAttention { q: &q, heads, dh };
        let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
        let (kt32, v32) = (f(&kt16), f(&v16));
        for (i, (oa, ob)) in a.chunks_mut(dh).zip(b.chunks_mut(dh)).enumerate() {
            let (row, h) = (i / heads, i % heads);
            qa.audio_head_on(Tier::Portable, row, h, &kt32, &v32, n, oa);
            let block = dh * n;
            let (kt, v) = (&kt16[h * block..][..block], &v16[h * block..][..block]);
            cross_head_f16_on(tier, qa.query(row, h), kt, v, n, ob);
        }
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{tier:?} n={n}: max diff {diff}");
        assert!(a.iter().any(|x| x.abs() > 1e-3), "degenerate test data");
    }
}
