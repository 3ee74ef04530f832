//! Attention for the decoder's few query rows: self-attention over the KV cache and
//! cross-attention over the window's audio keys/values (f32, or fp16 bits under q8).
//!
//! A head's audio keys are stored in tiles of [`KEY_TILE`] keys ([`audio_key_at`]): a score
//! tile reads its keys front to back, one stream the hardware prefetcher follows, where keys
//! transposed per head `(dh, n_audio)` put each dimension's row `2·n_audio` bytes (fp16) after
//! the last, so a tile touched a new cache line and a new page for every dimension: a
//! five-row call over fp16 keys from memory took 1.9× the time of the tiled layout (Zen 3).
//! Only where the keys lie changes: every score is the same operations in the same order.

use crate::elementwise::{dot, softmax_in_place};
use crate::isa::Tier;
#[cfg(target_arch = "x86_64")]
use crate::simd::{Avx2, Avx512, Simd};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

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

    /// Cross-attention to audio keys stored per head in tiles ([`audio_keys_len`] values a
    /// head, see [`audio_key_at`]) and values `(heads, n_audio, dh)`, as f32 or as fp16 bits
    /// (q8).
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
        let (kblock, block) = (audio_keys_len(self.dh, n_audio), self.dh * n_audio);
        T::cross_head_on(
            tier,
            self.query(row, h),
            &kt[h * kblock..][..kblock],
            &v[h * block..][..block],
            n_audio,
            out,
        );
    }
}

/// Keys per tile of a head's audio keys: one AVX-512 vector, two AVX2 ones.
pub const KEY_TILE: usize = 16;

/// Where dimension `d` of audio key `j` lies among one head's keys (`dh` dimensions each):
/// tiles of [`KEY_TILE`] keys one after another, each holding, dimension after dimension, its
/// keys side by side.
#[inline(always)]
pub fn audio_key_at(dh: usize, d: usize, j: usize) -> usize {
    (j / KEY_TILE) * dh * KEY_TILE + d * KEY_TILE + j % KEY_TILE
}

/// Values held for one head's `n` audio keys of `dh` dimensions: whole tiles, the last one
/// padded with zeros.
pub fn audio_keys_len(dh: usize, n: usize) -> usize {
    n.next_multiple_of(KEY_TILE) * dh
}

/// `heads` heads of audio keys in the tiled layout, head after head ([`audio_keys_len`] values
/// each), from their transposed rows: `kt[(h * dh + d) * n + j]` is dimension `d` of head `h`'s
/// key `j`.
pub fn tile_audio_keys<T: Copy + Default>(kt: &[T], heads: usize, dh: usize, n: usize) -> Vec<T> {
    assert!(
        kt.len() >= heads * dh * n,
        "audio keys shorter than {heads} × {dh} × {n}"
    );
    let per_head = audio_keys_len(dh, n);
    let mut tiled = vec![T::default(); heads * per_head];
    for (h, head) in tiled.chunks_exact_mut(per_head.max(1)).enumerate() {
        let src = &kt[h * dh * n..];
        for (t, tile) in head.chunks_exact_mut(dh * KEY_TILE).enumerate() {
            let (j0, keys) = (t * KEY_TILE, KEY_TILE.min(n - t * KEY_TILE));
            for (d, dst) in tile.chunks_exact_mut(KEY_TILE).enumerate() {
                dst[..keys].copy_from_slice(&src[d * n + j0..][..keys]);
            }
        }
    }
    tiled
}

/// The same tiles from keys stored as rows, as a projection writes them: dimension `d` of head
/// `h`'s key `j` is `k[j * stride + h * dh + d]` (`stride` ≥ `heads · dh`). Heads in parallel;
/// each tile reads its 16 rows once, so the keys need no transposed copy first.
pub fn tile_audio_key_rows<T: Copy + Default + Send + Sync>(
    k: &[T],
    stride: usize,
    heads: usize,
    dh: usize,
    n: usize,
) -> Vec<T> {
    use rayon::prelude::*;
    assert!(
        heads * dh <= stride && (n == 0 || k.len() >= (n - 1) * stride + heads * dh),
        "{n} audio key rows of stride {stride} do not hold {heads} × {dh}"
    );
    let per_head = audio_keys_len(dh, n);
    let mut tiled = vec![T::default(); heads * per_head];
    tiled
        .par_chunks_mut(per_head.max(1))
        .enumerate()
        .for_each(|(h, head)| {
            for (t, tile) in head.chunks_exact_mut(dh * KEY_TILE).enumerate() {
                let j0 = t * KEY_TILE;
                for i in 0..KEY_TILE.min(n - j0) {
                    let row = &k[(j0 + i) * stride + h * dh..][..dh];
                    for (d, &x) in row.iter().enumerate() {
                        tile[d * KEY_TILE + i] = x;
                    }
                }
            }
        });
    tiled
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
        Self::cross_rows_on(tier, &[q], kt, v, n, out)
    }
    fn cross_rows_on(tier: Tier, qs: &[&[f32]], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
        check_rows(qs, kt.len(), v.len(), n, out.len());
        #[cfg(target_arch = "x86_64")]
        if vector_rows(tier, qs, kt, v, n, out) {
            return;
        }
        cross_rows_on(tier, qs, kt, v, n, out)
    }
}

impl AudioValue for u16 {
    fn cross_head_on(tier: Tier, q: &[f32], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
        Self::cross_rows_on(tier, &[q], kt, v, n, out)
    }
    fn cross_rows_on(tier: Tier, qs: &[&[f32]], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
        check_rows(qs, kt.len(), v.len(), n, out.len());
        #[cfg(target_arch = "x86_64")]
        if vector_rows(tier, qs, kt, v, n, out) {
            return;
        }
        let dh = qs.first().map_or(0, |q| q.len());
        for (q, o) in qs.iter().zip(out.chunks_exact_mut(dh.max(1))) {
            cross_head_f16_portable(q, kt, v, n, o);
        }
    }
}

/// Panics unless every query row has the same length `dh` and the keys, values and output hold
/// [`audio_keys_len`], `dh × n` and `rows × dh` values.
fn check_rows(qs: &[&[f32]], kt: usize, v: usize, n: usize, out: usize) {
    let dh = qs.first().map_or(0, |q| q.len());
    assert!(
        kt >= audio_keys_len(dh, n)
            && v >= dh * n
            && out >= qs.len() * dh
            && qs.iter().all(|q| q.len() == dh),
        "audio attention over rows of unequal or short lengths"
    );
}

/// Cross-attention of several query rows (`qs`, each `dh` long, already scaled) over one head's
/// audio keys (tiled, [`audio_key_at`]) and values (`(n_audio, dh)`), writing `out`
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

/// An audio key/value element of the vector kernels: how it is loaded, and how a product joins
/// a sum. fp16 (q8) sums are fused (one rounding), as that kernel was first written; f32 sums
/// are a product then a sum, the portable kernel's arithmetic, which every tier of the f32
/// path gives bit for bit.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    unsafe fn load<S: Simd>(p: *const Self) -> S::V;
    unsafe fn madd<S: Simd>(a: S::V, b: S::V, c: S::V) -> S::V;
    fn value(self) -> f32;
}

#[cfg(target_arch = "x86_64")]
impl Lanes for u16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const u16) -> S::V {
        S::load_f16(p)
    }
    #[inline(always)]
    unsafe fn madd<S: Simd>(a: S::V, b: S::V, c: S::V) -> S::V {
        S::fmadd(a, b, c)
    }
    #[inline(always)]
    fn value(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f32) -> S::V {
        S::load(p)
    }
    #[inline(always)]
    unsafe fn madd<S: Simd>(a: S::V, b: S::V, c: S::V) -> S::V {
        S::add(c, S::mul(a, b))
    }
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
}

/// What the vector kernel does once the keys in whole vectors are scored: the scores of the
/// keys past them (`nw..n`) as the scalar loops always summed them (`s += q_d·k_d`, a product
/// then a sum, `d` in order), each row's softmax, then [`weighted_values`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish<S: Simd, T: Lanes>(
    qs: &[&[f32]],
    kt: &[T],
    v: &[T],
    n: usize,
    nw: usize,
    mut scores: Vec<f32>,
    out: &mut [f32],
) {
    let dh = qs[0].len();
    for (r, q) in qs.iter().enumerate() {
        for (j, sc) in scores[r * n..][..n].iter_mut().enumerate().skip(nw) {
            for (d, &qd) in q.iter().enumerate() {
                *sc += qd * kt[audio_key_at(dh, d, j)].value();
            }
        }
    }
    for row in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(row);
    }
    weighted_values::<S, T>(&scores, v, qs.len(), n, dh, out);
}

/// Runs the vector kernel of `tier` when it has one for this head size; false where the caller
/// must run the portable one.
#[cfg(target_arch = "x86_64")]
fn vector_rows<T: Lanes>(
    tier: Tier,
    qs: &[&[f32]],
    kt: &[T],
    v: &[T],
    n: usize,
    out: &mut [f32],
) -> bool {
    let dh = qs.first().map_or(0, |q| q.len());
    // SAFETY (both): the tier's features were detected (`Tier::available`); the lengths were
    // checked by the caller (`check_rows`) and the head size here.
    if tier >= Tier::Avx512 && fits::<Avx512>(dh) {
        unsafe { cross_rows_avx512(qs, kt, v, n, out) };
        return true;
    }
    if tier >= Tier::Avx2 && fits::<Avx2>(dh) {
        unsafe { cross_rows_avx2(qs, kt, v, n, out) };
        return true;
    }
    false
}

/// Whether a head of `dh` values suits `S`'s kernels: whole vectors.
#[cfg(target_arch = "x86_64")]
fn fits<S: Simd>(dh: usize) -> bool {
    dh > 0 && dh.is_multiple_of(S::LANES)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cross_rows_avx512<T: Lanes>(qs: &[&[f32]], kt: &[T], v: &[T], n: usize, out: &mut [f32]) {
    cross_rows_simd::<Avx512, T>(qs, kt, v, n, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn cross_rows_avx2<T: Lanes>(qs: &[&[f32]], kt: &[T], v: &[T], n: usize, out: &mut [f32]) {
    cross_rows_simd::<Avx2, T>(qs, kt, v, n, out)
}

/// Cross-attention of several query rows over one head's keys and values (fp16 or f32), written
/// once for every vector width. A score is `s = q_d·k_d + s` ([`Lanes::madd`]: fused for fp16,
/// the portable kernel's product then sum for f32) for `d` in order, a value `o = p_j·v_j + o`
/// for `j` in order, whatever the tiling: score tiles of up to five rows by a few vectors keep
/// their sums in registers over a whole head, value tiles (two rows by four vectors) over a
/// block of keys, each key and value vector loaded once per tile, where sums kept in memory
/// for every product made these loops store-bound (a five-row fp16 call took 0.5× the time,
/// Zen 3). Per row the same instructions in the same order, so a row's bits do not depend on
/// the others.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn cross_rows_simd<S: Simd, T: Lanes>(
    qs: &[&[f32]],
    kt: &[T],
    v: &[T],
    n: usize,
    out: &mut [f32],
) {
    // A vector of keys (from a whole vector `j`) lies within one tile, and a block is whole
    // tiles (its next block starts a tile: the prefetch).
    const { assert!(KEY_TILE.is_multiple_of(S::LANES) && KEY_BLOCK.is_multiple_of(KEY_TILE)) };
    let dh = qs[0].len();
    let rows = qs.len();
    let w = S::LANES;
    let nw = n / w * w;
    let mut scores = vec![0f32; rows * n];
    let (kp, sp) = (kt.as_ptr(), scores.as_mut_ptr());
    let mut j0 = 0;
    while j0 < nw {
        let j1 = (j0 + KEY_BLOCK).min(nw);
        // With one or two rows a block is scored faster than the hardware prefetcher brings
        // the next one: fetch its keys (contiguous) now. Over keys in memory (Zen 3) one and
        // two rows took 0.85× the time with this, three the same, five 1.07×: there a block's
        // scoring already hides the stream, and the burst of prefetches only costs.
        if j1 < nw && rows < 3 {
            // `wrapping_add`: a prefetch of any address is harmless; a pointer past its
            // allocation is not.
            let next = kp.wrapping_add(audio_key_at(dh, 0, j1)) as *const i8;
            for line in (0..KEY_BLOCK * dh * size_of::<T>()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line));
            }
        }
        let mut r0 = 0;
        while r0 < rows {
            let tile = (rows - r0).min(5);
            let q = &qs[r0..r0 + tile];
            let s = sp.add(r0 * n);
            let mut j = j0;
            // Wide tiles over the keys, then one vector at a time.
            macro_rules! keys {
                ($r:literal, $nj:literal) => {{
                    while j + $nj * w <= j1 {
                        score_tile::<S, T, $r, $nj>(q, kp, n, j, s);
                        j += $nj * w;
                    }
                    while j < j1 {
                        score_tile::<S, T, $r, 1>(q, kp, n, j, s);
                        j += w;
                    }
                }};
            }
            match tile {
                1 => keys!(1, 4),
                2 => keys!(2, 4),
                3 => keys!(3, 2),
                4 => keys!(4, 2),
                _ => keys!(5, 2),
            }
            r0 += tile;
        }
        j0 = j1;
    }
    finish::<S, T>(qs, kt, v, n, nw, scores, out);
}

/// Keys per block of [`cross_rows_simd`] and [`weighted_values`]: 8 KiB of a 64-value head's
/// fp16 keys or values, 16 KiB of f32 ones.
#[cfg(target_arch = "x86_64")]
const KEY_BLOCK: usize = 64;

/// Scores of `R` query rows for keys `j .. j + NJ·LANES` (`j` a whole vector, so each vector
/// within one tile of [`audio_key_at`]): `s[r][j..]` (row stride `n`) gets `q_d·k_d + s`
/// ([`Lanes::madd`]) for every dimension `d` of the head in order, from zero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn score_tile<S: Simd, T: Lanes, const R: usize, const NJ: usize>(
    qs: &[&[f32]],
    kt: *const T,
    n: usize,
    j: usize,
    s: *mut f32,
) {
    let w = S::LANES;
    let dh = qs[0].len();
    let q: [*const f32; R] = std::array::from_fn(|r| qs[r].as_ptr());
    let mut acc = [[S::zero(); NJ]; R];
    let keys: [*const T; NJ] = std::array::from_fn(|t| kt.add(audio_key_at(dh, 0, j + t * w)));
    for d in 0..dh {
        let k: [S::V; NJ] = std::array::from_fn(|t| T::load::<S>(keys[t].add(d * KEY_TILE)));
        for r in 0..R {
            let qd = S::splat(*q[r].add(d));
            for t in 0..NJ {
                acc[r][t] = T::madd::<S>(qd, k[t], acc[r][t]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (t, x) in a.iter().enumerate() {
            S::store(s.add(r * n + j + t * w), *x);
        }
    }
}

/// `out (rows, dh)` = each row's probabilities `scores (rows, n)` times the values `v (n, dh)`:
/// `o = p_j·v_j + o` ([`Lanes::madd`]) for each key `j` in order, from zero, in tiles of up to
/// two rows by four vectors whose sums stay in registers over a block of keys (each block's
/// values read from memory once and from L1 by every tile).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_values<S: Simd, T: Lanes>(
    scores: &[f32],
    v: &[T],
    rows: usize,
    n: usize,
    dh: usize,
    out: &mut [f32],
) {
    let w = S::LANES;
    let lanes = dh / w;
    let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
    out[..rows * dh].fill(0.0);
    for j0 in (0..n).step_by(KEY_BLOCK) {
        let keys = KEY_BLOCK.min(n - j0);
        let mut r0 = 0;
        while r0 < rows {
            let tile = (rows - r0).min(2);
            let mut c = 0;
            while c < lanes {
                let sc = scores.as_ptr().add(r0 * n + j0);
                let (vc, o) = (vp.add(j0 * dh + c * w), op.add(r0 * dh + c * w));
                match (tile, lanes - c) {
                    (1, 1) => value_tile::<S, T, 1, 1>(sc, vc, keys, n, dh, o),
                    (1, 2) => value_tile::<S, T, 1, 2>(sc, vc, keys, n, dh, o),
                    (1, 3) => value_tile::<S, T, 1, 3>(sc, vc, keys, n, dh, o),
                    (1, _) => value_tile::<S, T, 1, 4>(sc, vc, keys, n, dh, o),
                    (_, 1) => value_tile::<S, T, 2, 1>(sc, vc, keys, n, dh, o),
                    (_, 2) => value_tile::<S, T, 2, 2>(sc, vc, keys, n, dh, o),
                    (_, 3) => value_tile::<S, T, 2, 3>(sc, vc, keys, n, dh, o),
                    (_, _) => value_tile::<S, T, 2, 4>(sc, vc, keys, n, dh, o),
                }
                c += 4;
            }
            r0 += tile;
        }
    }
}

/// Outputs `c .. c + C·LANES` (`v` and `o` start there) of `R` rows over `keys` keys:
/// `o = p_j·v_j + o` ([`Lanes::madd`]) for each key `j` in order, from the sums `o` holds; `p`
/// holds the rows' probabilities (stride `n`), `o` has row stride `dh`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn value_tile<S: Simd, T: Lanes, const R: usize, const C: usize>(
    p: *const f32,
    v: *const T,
    keys: usize,
    n: usize,
    dh: usize,
    o: *mut f32,
) {
    let w = S::LANES;
    let mut acc: [[S::V; C]; R] =
        std::array::from_fn(|r| std::array::from_fn(|t| S::load(o.add(r * dh + t * w))));
    for j in 0..keys {
        let row = v.add(j * dh);
        let vv: [S::V; C] = std::array::from_fn(|t| T::load::<S>(row.add(t * w)));
        for r in 0..R {
            let pj = S::splat(*p.add(r * n + j));
            for t in 0..C {
                acc[r][t] = T::madd::<S>(pj, vv[t], acc[r][t]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (t, x) in a.iter().enumerate() {
            S::store(o.add(r * dh + t * w), *x);
        }
    }
}

/// The portable fp16 cross-attention: plain Rust, one row.
fn cross_head_f16_portable(q: &[f32], kt: &[u16], v: &[u16], n: usize, out: &mut [f32]) {
    let f = |b: u16| half::f16::from_bits(b).to_f32();
    let dh = q.len();
    let mut scores = vec![0f32; n];
    for d in 0..dh {
        for (j, s) in scores.iter_mut().enumerate() {
            *s += q[d] * f(kt[audio_key_at(dh, d, j)]);
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

/// Self-attention of one query row over `keys` cached rows: the portable version below, or on
/// AVX2 (heads of 16, 32, 48 or 64 values) `self_head_avx2`, the same operations in the same
/// order.
#[allow(clippy::too_many_arguments)]
pub fn self_head_on(
    tier: Tier,
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    keys: usize,
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    debug_assert!(
        tier.is_available(),
        "{tier:?} kernels need CPU features this one lacks"
    );
    #[cfg(target_arch = "x86_64")]
    if tier >= Tier::Avx2 {
        let n_shared = k.shared.len() / stride.max(1);
        let whole = |c: &CacheRows| {
            c.shared.len() == n_shared * stride && c.shared.len() + c.own.len() >= keys * stride
        };
        let fits = offset + q.len() <= stride && out.len() >= q.len() && whole(&k) && whole(&v);
        // SAFETY (each): AVX2 + FMA are present (`tier` is available); the rows read,
        // `keys` of `stride` values split at the same row in both caches, were checked above.
        match q.len() {
            16 if fits => {
                return unsafe { self_head_avx2::<1>(q, k, v, keys, stride, offset, out) }
            }
            32 if fits => {
                return unsafe { self_head_avx2::<2>(q, k, v, keys, stride, offset, out) }
            }
            48 if fits => {
                return unsafe { self_head_avx2::<3>(q, k, v, keys, stride, offset, out) }
            }
            64 if fits => {
                return unsafe { self_head_avx2::<4>(q, k, v, keys, stride, offset, out) }
            }
            _ => {}
        }
    }
    let _ = tier;
    self_head_portable(q, k, v, keys, stride, offset, out)
}

/// [`self_head_on`] on the best tier.
pub fn self_head(
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    keys: usize,
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    self_head_on(Tier::best(), q, k, v, keys, stride, offset, out)
}

/// `self_head_portable` in AVX2 for a head of `16·C` values, bit for bit: a score is
/// `dot`'s sixteen lanes (`lane += q·k`, a product then a sum) added up in lane order, so eight
/// keys' lanes are computed side by side, transposed, and summed in that order as vectors (the
/// scalar sum of sixteen lanes per key was a chain of sixteen dependent adds, most of this
/// kernel's time); the weighted sum of values keeps the head's outputs in registers.
///
/// # Safety
/// AVX2 and FMA present; `k` and `v` hold `keys` rows of `stride` values (split at the same
/// row), `offset + 16·C <= stride`, `out` at least `16·C` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn self_head_avx2<const C: usize>(
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    keys: usize,
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let dh = 16 * C;
    // What `dot` adds its lanes to (the neutral element of `f32: Sum`): every score is
    // `empty + (empty + lane₀ + … + lane₁₅)`.
    let empty: f32 = std::iter::empty::<f32>().sum();
    let row = |c: &CacheRows, j: usize| c.row(j, stride, offset, dh).as_ptr();
    let mut scores = vec![0f32; keys];
    let full = keys / 8 * 8;
    let qp = q.as_ptr();
    for j in (0..full).step_by(8) {
        let mut s = _mm256_set1_ps(empty);
        for half in 0..2 {
            // Lanes 8·half .. 8·half + 8 of each key's sixteen.
            let mut lanes = [_mm256_setzero_ps(); 8];
            for (b, l) in lanes.iter_mut().enumerate() {
                let kr = row(&k, j + b);
                for c in 0..C {
                    let at = 16 * c + 8 * half;
                    let prod =
                        _mm256_mul_ps(_mm256_loadu_ps(qp.add(at)), _mm256_loadu_ps(kr.add(at)));
                    *l = _mm256_add_ps(*l, prod);
                }
            }
            for t in transpose8(lanes) {
                s = _mm256_add_ps(s, t);
            }
        }
        _mm256_storeu_ps(
            scores.as_mut_ptr().add(j),
            _mm256_add_ps(_mm256_set1_ps(empty), s),
        );
    }
    for (j, sc) in scores.iter_mut().enumerate().skip(full) {
        *sc = dot(q, k.row(j, stride, offset, dh));
    }
    softmax_in_place(&mut scores);
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for (j, &p) in scores.iter().enumerate() {
        let (p, vr) = (_mm256_set1_ps(p), row(&v, j));
        for (c, a) in acc.iter_mut().enumerate() {
            for (h, x) in a.iter_mut().enumerate() {
                let prod = _mm256_mul_ps(p, _mm256_loadu_ps(vr.add(16 * c + 8 * h)));
                *x = _mm256_add_ps(*x, prod);
            }
        }
    }
    for (c, a) in acc.iter().enumerate() {
        for (h, x) in a.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(16 * c + 8 * h), *x);
        }
    }
}

/// Rows of an 8 × 8 block as its columns: lane `b` of output `i` is lane `i` of input `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// The portable self-attention of one query row over the cache (the reference).
fn self_head_portable(
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    keys: usize,
    stride: usize,
    offset: usize,
    out: &mut [f32],
) {
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
}

kernel!(#[allow(dead_code)] fn cross_rows / cross_rows_on(qs: &[&[f32]], kt: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
    // The portable f32 kernel. Per row the same operations in the same order whatever the
    // other rows; dimension `d` of the keys (and value row `j`) is read once for every query
    // row.
    let rows = qs.len();
    let dh = qs.first().map_or(0, |q| q.len());
    let mut scores = vec![0f32; rows * n];
    for d in 0..dh {
        for (r, q) in qs.iter().enumerate() {
            let qd = q[d];
            for (j, s) in scores[r * n..][..n].iter_mut().enumerate() {
                *s += qd * kt[audio_key_at(dh, d, j)];
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

    /// The bit patterns (so +0 and −0 differ).
    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|f| f.to_bits()).collect()
    }

    /// `len` test values times `scale`, as fp16 bit patterns.
    fn f16_values(len: usize, seed: u64, scale: f32) -> Vec<u16> {
        crate::test_values(len, seed)
            .iter()
            .map(|&x| half::f16::from_f32(scale * x).to_bits())
            .collect()
    }

    /// Tiling keys held as rows gives the tiles of the same keys transposed, with a stride
    /// wider than the heads (a projection of several layers) and partial last tiles.
    #[test]
    fn key_rows_tile_as_transposed_keys_do() {
        for (heads, dh, n, stride) in [(2, 64, 1500, 128), (1, 16, 1, 40), (3, 8, 33, 30)] {
            let k: Vec<u32> = (1..=(stride * n) as u32).collect();
            let mut kt = vec![0u32; heads * dh * n];
            for h in 0..heads {
                for d in 0..dh {
                    for j in 0..n {
                        kt[(h * dh + d) * n + j] = k[j * stride + h * dh + d];
                    }
                }
            }
            assert_eq!(
                tile_audio_key_rows(&k, stride, heads, dh, n),
                tile_audio_keys(&kt, heads, dh, n),
                "heads {heads} dh {dh} n {n} stride {stride}"
            );
        }
        assert!(tile_audio_key_rows::<u32>(&[], 8, 1, 8, 0).is_empty());
    }

    /// Every key of every head lands where `audio_key_at` says, the padding of each head's last
    /// tile is zeros, for counts below, at and past whole tiles.
    #[test]
    fn tiled_keys_are_where_audio_key_at_says() {
        for (heads, dh, n) in [(2, 64, 1500), (1, 16, 1), (3, 8, 16), (2, 24, 33)] {
            let kt: Vec<u32> = (1..=(heads * dh * n) as u32).collect();
            let t = tile_audio_keys(&kt, heads, dh, n);
            let per_head = audio_keys_len(dh, n);
            assert_eq!(per_head, n.div_ceil(KEY_TILE) * KEY_TILE * dh);
            assert_eq!(t.len(), heads * per_head);
            let mut seen = vec![false; t.len()];
            for h in 0..heads {
                for d in 0..dh {
                    for j in 0..n {
                        let at = h * per_head + audio_key_at(dh, d, j);
                        let want = kt[(h * dh + d) * n + j];
                        assert_eq!(t[at], want, "dh {dh} n {n}: head {h} d {d} key {j}");
                        assert!(!std::mem::replace(&mut seen[at], true), "two keys at {at}");
                    }
                }
            }
            let padding = seen.iter().zip(&t).filter(|(s, _)| !**s);
            assert!(padding.clone().all(|(_, &x)| x == 0), "dh {dh} n {n}");
            assert_eq!(padding.count(), t.len() - heads * dh * n);
        }
    }

    /// The portable kernels (f32 and fp16) read the tiled keys as the keys they are: bit for bit
    /// the scalar `s += q_d·k_d`, softmax, `o += p_j·v_j` over the keys transposed, for a key
    /// count that ends inside a tile and for one and three rows.
    #[test]
    fn portable_kernels_read_tiled_keys() {
        let (dh, n) = (64, 77);
        let f = |b: u16| half::f16::from_bits(b).to_f32();
        let kt16: Vec<u16> = f16_values(dh * n, 51, 4.0);
        let v16: Vec<u16> = f16_values(dh * n, 52, 1.0);
        let (kt32, v32): (Vec<f32>, Vec<f32>) = (
            kt16.iter().map(|&b| f(b)).collect(),
            v16.iter().map(|&b| f(b)).collect(),
        );
        let q = crate::test_values(3 * dh, 53);
        let want = |qr: &[f32]| {
            let mut s = vec![0f32; n];
            for (d, &qd) in qr.iter().enumerate() {
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj += qd * kt32[d * n + j];
                }
            }
            softmax_in_place(&mut s);
            let mut o = vec![0f32; dh];
            for (j, &p) in s.iter().enumerate() {
                for (x, oo) in o.iter_mut().enumerate() {
                    *oo += p * v32[j * dh + x];
                }
            }
            o
        };
        for rows in [1, 3] {
            let qs: Vec<&[f32]> = q.chunks_exact(dh).take(rows).collect();
            let (mut a, mut b) = (vec![0f32; rows * dh], vec![0f32; rows * dh]);
            let (t32, t16) = (
                tile_audio_keys(&kt32, 1, dh, n),
                tile_audio_keys(&kt16, 1, dh, n),
            );
            audio_rows_on(Tier::Portable, &qs, &t32, &v32, n, &mut a);
            audio_rows_on(Tier::Portable, &qs, &t16, &v16, n, &mut b);
            for (r, qr) in qs.iter().enumerate() {
                let w = want(qr);
                assert_eq!(bits(&a[r * dh..][..dh]), bits(&w), "f32 row {r} of {rows}");
                assert_eq!(bits(&b[r * dh..][..dh]), bits(&w), "fp16 row {r} of {rows}");
            }
        }
    }

    /// fp16-stored audio keys/values (q8) give what the f32 kernel gives on the same values, on
    /// the portable f32 kernel gives on the same values, for lengths that are and are not a
    /// multiple of the lanes and two query rows (harness).
    pub(crate) fn audio_f16(tier: Tier) {
        for n in [37, 1500] {
            audio_attention_over_f16_matches_f32_on(tier, n);
        }
        let (dh, n) = (64, 77);
        let kt: Vec<u16> = f16_values(dh * n, 21, 1.0);
        let v: Vec<u16> = f16_values(dh * n, 22, 1.0);
        rows_equal_single_rows(tier, &tile_audio_keys(&kt, 1, dh, n), &v, dh, n);
        fused_order_pinned(tier);
    }

    /// The vector kernels' fp16 cross-attention is, per row, exactly `score = q_d·k_d + score`
    /// (fused, `d` in order) for keys in whole vectors, the unfused `score += q_d·k_d` for the
    /// rest, and `out = p_j·v_j + out` (fused, `j` in order): checked bit for bit against that
    /// written in scalars, for one row, five (one tile) and eight (tiles of five and three), and
    /// a head of 48 values (value tiles of four and two vectors, AVX2).
    fn fused_order_pinned(tier: Tier) {
        let lanes = match tier {
            Tier::Portable => return,
            Tier::Avx2 => 8,
            _ => 16,
        };
        let f = |b: u16| half::f16::from_bits(b).to_f32();
        for (dh, n) in [(64, 77), (64, 1500), (48, 1500)] {
            if dh % lanes != 0 {
                continue; // the portable kernel's case
            }
            let kt: Vec<u16> = f16_values(dh * n, 41, 4.0);
            let v: Vec<u16> = f16_values(dh * n, 42, 1.0);
            let q = crate::test_values(8 * dh, 43);
            for rows in [1, 5, 8] {
                let qs: Vec<&[f32]> = q.chunks_exact(dh).take(rows).collect();
                let mut got = vec![0f32; rows * dh];
                audio_rows_on(tier, &qs, &tile_audio_keys(&kt, 1, dh, n), &v, n, &mut got);
                for (r, qr) in qs.iter().enumerate() {
                    let whole = n / lanes * lanes;
                    let mut s = vec![0f32; n];
                    for (j, sj) in s.iter_mut().enumerate() {
                        for d in 0..dh {
                            let k = f(kt[d * n + j]);
                            *sj = if j < whole {
                                qr[d].mul_add(k, *sj)
                            } else {
                                *sj + qr[d] * k
                            };
                        }
                    }
                    softmax_in_place(&mut s);
                    let mut want = vec![0f32; dh];
                    for (j, p) in s.iter().enumerate() {
                        for (o, w) in want.iter_mut().enumerate() {
                            *w = p.mul_add(f(v[j * dh + o]), *w);
                        }
                    }
                    assert_eq!(
                        bits(&got[r * dh..][..dh]),
                        bits(&want),
                        "{tier:?} dh {dh} n {n} row {r} of {rows}"
                    );
                }
            }
        }
    }

    /// Several rows at once give every row's single-row result, bit for bit, for 1 to 8 rows.
    fn rows_equal_single_rows<T: AudioValue>(tier: Tier, kt: &[T], v: &[T], dh: usize, n: usize) {
        let q = crate::test_values(8 * dh, 23);
        for rows in 1..=8 {
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
        cache_bit_for_bit(tier);
        // Eight rows over a full window of f32 audio (blocks of keys, tiles of five and three):
        // bit for bit the portable kernel.
        let (dh, n) = (64, 1500);
        let (kt, v) = (
            crate::test_values(dh * n, 14),
            crate::test_values(dh * n, 15),
        );
        let q: Vec<f32> = crate::test_values(8 * dh, 16)
            .iter()
            .map(|x| 4.0 * x)
            .collect();
        let qs: Vec<&[f32]> = q.chunks_exact(dh).collect();
        let (mut a, mut b) = (vec![0f32; 8 * dh], vec![0f32; 8 * dh]);
        let kt = tile_audio_keys(&kt, 1, dh, n);
        audio_rows_on(tier, &qs, &kt, &v, n, &mut a);
        audio_rows_on(Tier::Portable, &qs, &kt, &v, n, &mut b);
        assert_eq!(bits(&a), bits(&b), "{tier:?}: eight rows over {n} f32 keys");
        let (heads, dh, n) = (3, 64, 77);
        let q = crate::test_values(2 * heads * dh, 11);
        let kt = crate::test_values(heads * dh * n, 12);
        let v = crate::test_values(heads * dh * n, 13);
        let ktt = tile_audio_keys(&kt, heads, dh, n);
        rows_equal_single_rows(tier, &ktt, &v[..dh * n], dh, n);
        let qa = QueryAttention { q: &q, heads, dh };
        let (mut a, mut b) = (vec![0f32; dh], vec![0f32; dh]);
        for row in 0..2 {
            for h in 0..heads {
                // f32 audio attention is the portable arithmetic on every tier: bit for bit.
                qa.audio_head_on(tier, row, h, &ktt, &v, n, &mut a);
                qa.audio_head_on(Tier::Portable, row, h, &ktt, &v, n, &mut b);
                assert_eq!(bits(&a), bits(&b), "{tier:?} audio row {row} head {h}");
                assert!(a.iter().any(|x| x.abs() > 1e-3), "degenerate test data");
                // A cache of 40 tokens of (heads·dh), the query at position 30 + row.
                let (k, vv) = (CacheRows::own(&kt), CacheRows::own(&v));
                qa.cache_head_on(tier, row, h, k, vv, 30, &mut a);
                qa.cache_head_on(Tier::Portable, row, h, k, vv, 30, &mut b);
                assert_eq!(bits(&a), bits(&b), "{tier:?} cache row {row} head {h}");
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

    /// The self-attention over a cache gives the portable version's bits: heads of 16 to 64 values
    /// (and 80, the portable fallback), a key count below, at and past whole blocks of eight,
    /// caches split (a shared prefix) at various rows and as a slice of a wider row.
    fn cache_bit_for_bit(tier: Tier) {
        for dh in [16, 32, 48, 64, 80] {
            let heads = 3;
            let stride = heads * dh;
            let tokens = 301;
            let kc = crate::test_values(tokens * stride, 31 + dh as u64);
            let vc = crate::test_values(tokens * stride, 32 + dh as u64);
            // Scaled as the decoder's queries are (dh^-0.5), and larger, so the softmax is peaked.
            let q: Vec<f32> = crate::test_values(dh, 33).iter().map(|x| 6.0 * x).collect();
            for keys in [1, 7, 8, 9, 16, 40, 301] {
                for cut in [0, 1, 8, 13, keys] {
                    fn split(x: &[f32], at: usize) -> CacheRows<'_> {
                        CacheRows {
                            shared: &x[..at],
                            own: &x[at..],
                        }
                    }
                    for h in [0, 2] {
                        let (mut a, mut b) = (vec![0f32; dh], vec![0f32; dh]);
                        self_head_on(
                            tier,
                            &q,
                            split(&kc, cut * stride),
                            split(&vc, cut * stride),
                            keys,
                            stride,
                            h * dh,
                            &mut a,
                        );
                        let (k, v) = (CacheRows::own(&kc), CacheRows::own(&vc));
                        self_head_portable(&q, k, v, keys, stride, h * dh, &mut b);
                        assert_eq!(
                            bits(&a),
                            bits(&b),
                            "{tier:?} dh {dh} keys {keys} shared {cut} head {h}"
                        );
                        assert!(a.iter().any(|x| x.abs() > 1e-3), "degenerate test data");
                    }
                }
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
        let (kt32, v32) = (tile_audio_keys(&f(&kt16), heads, dh, n), f(&v16));
        let kt16 = tile_audio_keys(&kt16, heads, dh, n);
        for (i, (oa, ob)) in a.chunks_mut(dh).zip(b.chunks_mut(dh)).enumerate() {
            let (row, h) = (i / heads, i % heads);
            qa.audio_head_on(Tier::Portable, row, h, &kt32, &v32, n, oa);
            let (kblock, block) = (audio_keys_len(dh, n), dh * n);
            let (kt, v) = (&kt16[h * kblock..][..kblock], &v16[h * block..][..block]);
            u16::cross_head_on(tier, qa.query(row, h), kt, v, n, ob);
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
