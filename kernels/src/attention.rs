//! The encoder's self-attention in f32 on AVX2 + FMA, fused per (head, block of query rows).
//!
//! Done as candle ops, a head's `q·kᵀ` is a 1500 × 1500 score matrix (9 MB) that goes through
//! memory three times (matmul out, softmax, matmul in), and candle's GEMM reaches ~67 GFLOP/s
//! on that thin shape. Here each task computes 48 rows of scores (288 KB, held in the core's
//! L2), exponentiates them in place (the 8-lane FMA form of the one `exp`; the scalar one, auto-vectorized
//! without FMA, took a quarter of the attention's time), multiplies them by the head's values
//! with the same FMA microkernel, and scales each output row by its 1/Σ. Used by `f32` on every
//! AVX2 CPU; same arithmetic as the unfused version up to summation order and the exp's last
//! bits.
//!
//! q8 on CPUs without AVX-512 BF16 runs the same steps with both products in 16-bit integers
//! ([`attention_int16`]); where the CPU has BF16, q8 uses `bf16::attention` instead. The
//! skeleton (packing per head, tasks per block, reassembly) is shared through `HeadMath`.

use rayon::prelude::*;

use crate::isa::Tier;

/// Query rows per task: a multiple of the microkernel's 6 rows; 48 × 1504 scores fill
/// ~60 % of a Zen 3 / Skylake core's L2 and give 6 heads × 32 = 192 tasks for a tiny window.
const QUERY_BLOCK: usize = 48;
/// The microkernel's tile: 6 rows × 16 columns (two AVX2 vectors), 12 accumulators.
#[cfg(target_arch = "x86_64")]
const MR: usize = 6;
const NR: usize = 16;
/// Keys per pass of probabilities × values: 64 rows of a 64-wide head are 16 KB of values.
const KEY_CHUNK: usize = 64;

/// Whether this CPU runs the fused kernel (the caller falls back to candle ops otherwise).
pub fn available() -> bool {
    Tier::best() >= Tier::Avx2
}

/// Head sizes must be a multiple of this (the microkernel's tile width).
pub const HEAD_MULTIPLE: usize = NR;

/// Multi-head self-attention: `qkv` is the fused `(b, t, 3·d)` q/k/v projection (q already
/// scaled by dh^-0.5), `y` the `(b, t, d)` output with heads side by side. The caller checks
/// [`available`] first; `heads` must divide `d` into heads of a multiple of [`HEAD_MULTIPLE`].
pub fn attention(qkv: &[f32], b: usize, t: usize, d: usize, heads: usize, y: &mut [f32]) {
    attend::<F32Head>(qkv, b, t, d, heads, y)
}

/// [`attention`] with 16-bit integer products (`vpmaddwd`, i32 sums): q8's attention on CPUs
/// without AVX-512 BF16. Queries and keys are rounded per row to the most bits whose `dh`
/// products still sum in i32 (±5792 for 64-wide heads), probabilities to 14 bits of their
/// row's maximum (which is 1), values per head column to ±2047; each row's output is divided
/// by the sum of its rounded probabilities, so it stays a weighted average of the values.
/// Twice the products per instruction of the f32 FMA kernel, which it otherwise follows.
pub fn attention_int16(qkv: &[f32], b: usize, t: usize, d: usize, heads: usize, y: &mut [f32]) {
    attend::<I16Head>(qkv, b, t, d, heads, y)
}

fn attend<M: HeadMath>(qkv: &[f32], b: usize, t: usize, d: usize, heads: usize, y: &mut [f32]) {
    assert!(available(), "fused attention needs AVX2 and FMA");
    assert!(
        heads > 0 && d.is_multiple_of(heads) && (d / heads).is_multiple_of(NR),
        "{d} values do not split into {heads} heads of a multiple of {NR}"
    );
    assert!(
        qkv.len() >= b * t * 3 * d && y.len() >= b * t * d,
        "attention operands too short"
    );
    for (w, y) in y.chunks_mut(t * d).enumerate().take(b) {
        attend_window::<M>(&qkv[w * t * 3 * d..][..t * 3 * d], t, d, heads, y);
    }
}

/// Where one window's attention is: its `(t, 3·d)` projections, and one head of them.
#[derive(Clone, Copy)]
struct HeadView<'a> {
    qkv: &'a [f32],
    t: usize,
    d: usize,
    /// `t` rounded up to whole tiles of keys.
    t_pad: usize,
    /// The head's width and its first column within q (and k, v at + d, + 2d).
    dh: usize,
    col: usize,
}

impl HeadView<'_> {
    /// Row `j`'s part `part` (0 = q, 1 = k, 2 = v) of this head.
    fn row(&self, j: usize, part: usize) -> &[f32] {
        &self.qkv[j * 3 * self.d + part * self.d + self.col..][..self.dh]
    }
}

/// How a head's attention computes: keys and values packed once per window, then one block
/// of QUERY_BLOCK query rows per task.
trait HeadMath: Sized + Send + Sync {
    /// A task's buffers, reused across its blocks.
    type Scratch: Send;
    fn pack(head: HeadView) -> Self;
    fn scratch(head: HeadView) -> Self::Scratch;
    /// The block's output rows, QUERY_BLOCK × dh (rows past `rows` are dropped).
    fn block(&self, head: HeadView, first: usize, rows: usize, s: &mut Self::Scratch) -> Vec<f32>;
}

/// One window: `qkv` is `(t, 3·d)`, `y` is `(t, d)`.
fn attend_window<M: HeadMath>(qkv: &[f32], t: usize, d: usize, heads: usize, y: &mut [f32]) {
    let dh = d / heads;
    // Keys padded with zero columns to whole tiles (their scores are dropped before the
    // softmax); values with zero rows to match (their probabilities are zero).
    let view = |h: usize| HeadView {
        qkv,
        t,
        d,
        t_pad: t.div_ceil(NR) * NR,
        dh,
        col: h * dh,
    };
    let packed: Vec<M> = (0..heads)
        .into_par_iter()
        .map(|h| M::pack(view(h)))
        .collect();
    let blocks = t.div_ceil(QUERY_BLOCK);
    // Head-major task order: consecutive tasks on a core reuse that head's keys and values.
    let outs: Vec<Vec<f32>> = (0..heads * blocks)
        .into_par_iter()
        .map_init(
            || M::scratch(view(0)),
            |scratch, task| {
                let (h, block) = (task / blocks, task % blocks);
                let first = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(t - first);
                let mut out = packed[h].block(view(h), first, rows, scratch);
                out.truncate(rows * dh);
                out
            },
        )
        .collect();
    y.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        for (h, dst) in row.chunks_exact_mut(dh).enumerate() {
            let block = &outs[h * blocks + i / QUERY_BLOCK];
            dst.copy_from_slice(&block[(i % QUERY_BLOCK) * dh..][..dh]);
        }
    });
}

/// f32 keys (transposed, `dh × t_pad`) and values (`t_pad × dh`).
struct F32Head {
    keys_t: Vec<f32>,
    values: Vec<f32>,
}

impl HeadMath for F32Head {
    /// Queries (QUERY_BLOCK × dh) and scores (QUERY_BLOCK × t_pad).
    type Scratch = (Vec<f32>, Vec<f32>);

    fn pack(head: HeadView) -> Self {
        let HeadView { t, t_pad, dh, .. } = head;
        let mut keys_t = vec![0f32; dh * t_pad];
        let mut values = vec![0f32; t_pad * dh];
        for j in 0..t {
            for (c, &k) in head.row(j, 1).iter().enumerate() {
                keys_t[c * t_pad + j] = k;
            }
            values[j * dh..][..dh].copy_from_slice(head.row(j, 2));
        }
        Self { keys_t, values }
    }

    fn scratch(head: HeadView) -> Self::Scratch {
        (
            vec![0f32; QUERY_BLOCK * head.dh],
            vec![0f32; QUERY_BLOCK * head.t_pad],
        )
    }

    fn block(
        &self,
        head: HeadView,
        first: usize,
        rows: usize,
        (queries, scores): &mut Self::Scratch,
    ) -> Vec<f32> {
        let HeadView { t, t_pad, dh, .. } = head;
        // Rows past `rows` of a last, partial block are zero queries: uniform probabilities,
        // computed and dropped.
        queries.fill(0.0);
        for (r, dst) in queries.chunks_exact_mut(dh).take(rows).enumerate() {
            dst.copy_from_slice(head.row(first + r, 0));
        }
        let mut out = vec![0f32; QUERY_BLOCK * dh];
        // SAFETY: `available()` was checked by `attend`; every operand covers the tiles the
        // calls read and write (QUERY_BLOCK rows, t_pad and dh multiples of NR).
        unsafe {
            product(queries, dh, &self.keys_t, t_pad, dh, scores, t_pad, false);
        }
        // Unnormalized probabilities (the padded keys' scores become −∞, so 0); each row's
        // 1/Σ scales its output below, 64 values instead of 1500.
        let mut inv_sums = [0f32; QUERY_BLOCK];
        for (row, inv) in scores.chunks_exact_mut(t_pad).zip(&mut inv_sums) {
            row[t..].fill(f32::NEG_INFINITY);
            // SAFETY: as above; the row's length is a multiple of NR.
            *inv = unsafe { exp_row(row) };
        }
        // Keys in chunks, so a chunk of values (KEY_CHUNK × dh) stays in L1 while every row
        // tile uses it; from L2 the loads of `b` stalled the FMAs.
        for first_key in (0..t_pad).step_by(KEY_CHUNK) {
            let keys = KEY_CHUNK.min(t_pad - first_key);
            // SAFETY: as above.
            unsafe {
                product(
                    &scores[first_key..],
                    t_pad,
                    &self.values[first_key * dh..],
                    dh,
                    keys,
                    &mut out,
                    dh,
                    first_key > 0,
                );
            }
        }
        for (row, inv) in out.chunks_exact_mut(dh).zip(inv_sums) {
            row.iter_mut().for_each(|v| *v *= inv);
        }
        out
    }
}

/// Probabilities (≤ 1) as integers: 14 bits, so that a chunk of KEY_CHUNK keys times values of
/// at most [`VALUE_MAX`] sums below 2^31.
const PROB_ONE: f32 = 16383.0;
/// Values as integers, per head column.
const VALUE_MAX: f32 = 2047.0;
const _: () = assert!((KEY_CHUNK as f64) * 16383.0 * 2047.0 < i32::MAX as f64);

/// The largest query or key integer for `dh`-wide heads: `dh` products sum below 2^31.
fn qk_max(dh: usize) -> f32 {
    (i32::MAX as f64 / dh as f64)
        .sqrt()
        .floor()
        .min(i16::MAX as f64) as f32
}

/// `dst[i] = round(src[i] / scale)` for the scale that maps `src`'s largest magnitude to
/// `max`; returns the scale (0 for a row that is all zeros, holds a NaN or ±∞, or is too small
/// to scale: its integers are 0).
///
/// # Safety
/// The CPU has AVX2; `src` and `dst` have the same length, a multiple of 8.
unsafe fn quantize_row(src: &[f32], max: f32, dst: &mut [i16]) -> f32 {
    let top = abs_max(src);
    let mul = max / top;
    if top == 0.0 || !top.is_finite() || !mul.is_finite() {
        dst.fill(0);
        return 0.0;
    }
    round_row(src, mul, dst);
    top / max
}

/// `dst[i] = round(src[i] · mul)` (to nearest, ties to even; saturating at ±32767); returns
/// Σ dst.
///
/// # Safety
/// The CPU has AVX2; `src` and `dst` have the same length, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_row(src: &[f32], mul: f32, dst: &mut [i16]) -> i32 {
    use std::arch::x86_64::*;
    debug_assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
    let m = _mm256_set1_ps(mul);
    let mut sum = _mm256_setzero_si256();
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        // The default rounding mode rounds to nearest, ties to even.
        let v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s.as_ptr()), m));
        let packed = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, packed);
        sum = _mm256_add_epi32(sum, _mm256_cvtepi16_epi32(packed));
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
    lanes.iter().sum()
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row(_: &[f32], _: f32, _: &mut [i16]) -> i32 {
    unreachable!("`available()` is false off x86-64")
}

/// The largest magnitude in `src` (0 if empty), NaN if any value is NaN.
///
/// # Safety
/// The CPU has AVX2; `src.len()` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn abs_max(src: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(src.len().is_multiple_of(8));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let (mut top, mut nan) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for v in src.chunks_exact(8) {
        let v = _mm256_loadu_ps(v.as_ptr());
        top = _mm256_max_ps(_mm256_and_ps(v, abs), top);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    if _mm256_movemask_ps(nan) != 0 {
        return f32::NAN;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), top);
    lanes.iter().fold(0f32, |a, &b| a.max(b))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn abs_max(_: &[f32]) -> f32 {
    unreachable!("`available()` is false off x86-64")
}

/// `tops[c] = max(tops[c], |row[c]|)`, NaN where `row[c]` is NaN (and staying NaN).
///
/// # Safety
/// The CPU has AVX2; `row` and `tops` have the same length, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_tops(row: &[f32], tops: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(row.len() == tops.len() && row.len().is_multiple_of(8));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    for (v, top) in row.chunks_exact(8).zip(tops.chunks_exact_mut(8)) {
        let v = _mm256_loadu_ps(v.as_ptr());
        let old = _mm256_loadu_ps(top.as_ptr());
        // `max_ps` returns its second operand when either is NaN: NaN in `old` stays, a NaN
        // in `v` is blended in below.
        let m = _mm256_max_ps(_mm256_and_ps(v, abs), old);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
        _mm256_storeu_ps(top.as_mut_ptr(), _mm256_blendv_ps(m, v, nan));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn column_tops(_: &[f32], _: &mut [f32]) {
    unreachable!("`available()` is false off x86-64")
}

/// Two rows of values, rounded per column (`round(v · muls[c])`, 0 where `muls[c]` is 0) and
/// interleaved per column: `dst[2c] = first[c]`, `dst[2c + 1] = second[c]`.
///
/// # Safety
/// The CPU has AVX2; `first`, `second` and `muls` have the same length, a multiple of 16;
/// `dst` twice that.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_pair(first: &[f32], second: &[f32], muls: &[f32], dst: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = first.len();
    debug_assert!(second.len() == n && muls.len() == n && dst.len() == 2 * n);
    debug_assert!(n.is_multiple_of(16));
    let round8 = |src: *const f32, m: __m256| {
        // 0 · ±∞ or 0 · NaN is NaN: columns with a multiplier of 0 are masked to 0 instead.
        let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps());
        let v = _mm256_cvtps_epi32(_mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(src), m), keep));
        _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
    };
    for c in (0..n).step_by(8) {
        let m = _mm256_loadu_ps(muls.as_ptr().add(c));
        let a = round8(first.as_ptr().add(c), m);
        let b = round8(second.as_ptr().add(c), m);
        let out = dst.as_mut_ptr().add(2 * c) as *mut __m128i;
        _mm_storeu_si128(out, _mm_unpacklo_epi16(a, b));
        _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(a, b));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_pair(_: &[f32], _: &[f32], _: &[f32], _: &mut [i16]) {
    unreachable!("`available()` is false off x86-64")
}

/// 16-bit keys (pairs of head columns interleaved per key: `dh/2 × t_pad × 2`, with a scale
/// per key) and values (pairs of keys interleaved per column: `t_pad/2 × dh × 2`, with a scale
/// per column).
struct I16Head {
    keys: Vec<i16>,
    key_scales: Vec<f32>,
    values: Vec<i16>,
    value_scales: Vec<f32>,
}

impl HeadMath for I16Head {
    /// Queries (QUERY_BLOCK × dh), their scales, scores (QUERY_BLOCK × t_pad, f32) and
    /// probabilities (QUERY_BLOCK × t_pad, i16).
    type Scratch = (Vec<i16>, Vec<f32>, Vec<f32>, Vec<i16>);

    fn pack(head: HeadView) -> Self {
        let HeadView { t, t_pad, dh, .. } = head;
        let max = qk_max(dh);
        let mut keys = vec![0i16; dh * t_pad];
        let mut key_scales = vec![0f32; t_pad];
        let mut row = vec![0i16; dh];
        for (j, scale) in key_scales.iter_mut().enumerate().take(t) {
            // SAFETY: `available()` was checked by `attend`; dh is a multiple of NR.
            *scale = unsafe { quantize_row(head.row(j, 1), max, &mut row) };
            // A pair of head columns is one i32 step of the product: copied whole.
            for (c2, pair) in row.chunks_exact(2).enumerate() {
                keys[(c2 * t_pad + j) * 2..][..2].copy_from_slice(pair);
            }
        }
        let mut tops = vec![0f32; dh];
        for j in 0..t {
            // SAFETY: as above.
            unsafe { column_tops(head.row(j, 2), &mut tops) };
        }
        // A column with a non-finite value, or too small to scale, is all zeros.
        let ok = |top: f32| top > 0.0 && top.is_finite() && (VALUE_MAX / top).is_finite();
        let value_scales: Vec<f32> = tops
            .iter()
            .map(|&top| if ok(top) { top / VALUE_MAX } else { 0.0 })
            .collect();
        let muls: Vec<f32> = tops
            .iter()
            .map(|&top| if ok(top) { VALUE_MAX / top } else { 0.0 })
            .collect();
        let mut values = vec![0i16; t_pad * dh];
        let zeros = vec![0f32; dh];
        for (j, pair) in values
            .chunks_exact_mut(2 * dh)
            .enumerate()
            .take(t.div_ceil(2))
        {
            let second = if 2 * j + 1 < t {
                head.row(2 * j + 1, 2)
            } else {
                &zeros
            };
            // SAFETY: as above; `pair` is 2·dh values.
            unsafe { round_pair(head.row(2 * j, 2), second, &muls, pair) };
        }
        Self {
            keys,
            key_scales,
            values,
            value_scales,
        }
    }

    fn scratch(head: HeadView) -> Self::Scratch {
        (
            vec![0; QUERY_BLOCK * head.dh],
            vec![0.0; QUERY_BLOCK],
            vec![0.0; QUERY_BLOCK * head.t_pad],
            vec![0; QUERY_BLOCK * head.t_pad],
        )
    }

    fn block(
        &self,
        head: HeadView,
        first: usize,
        rows: usize,
        (queries, query_scales, scores, probs): &mut Self::Scratch,
    ) -> Vec<f32> {
        let HeadView { t, t_pad, dh, .. } = head;
        let max = qk_max(dh);
        // Rows past `rows` of a last, partial block are zero queries, computed and dropped.
        queries.fill(0);
        query_scales.fill(0.0);
        for (r, (dst, scale)) in queries
            .chunks_exact_mut(dh)
            .zip(query_scales.iter_mut())
            .take(rows)
            .enumerate()
        {
            // SAFETY: `available()` was checked by `attend`; dh is a multiple of NR.
            *scale = unsafe { quantize_row(head.row(first + r, 0), max, dst) };
        }
        // SAFETY: `available()` was checked by `attend`; every operand covers the tiles the
        // calls read and write (QUERY_BLOCK rows; t_pad and dh multiples of NR, so of 2).
        unsafe {
            product_i16(
                queries,
                dh,
                &self.keys,
                dh / 2,
                (query_scales, &self.key_scales),
                scores,
                t_pad,
                false,
            );
        }
        // Probabilities relative to each row's maximum, rounded; a row's output is divided by
        // the sum of its rounded probabilities.
        let mut inv_sums = [0f32; QUERY_BLOCK];
        for ((row, p), inv) in scores
            .chunks_exact_mut(t_pad)
            .zip(probs.chunks_exact_mut(t_pad))
            .zip(&mut inv_sums)
        {
            row[t..].fill(f32::NEG_INFINITY);
            // SAFETY: as above; the row's length is a multiple of NR.
            let sum = unsafe { exp_round_row(row, PROB_ONE, p) };
            // The maximum's probability is PROB_ONE, so the sum is never 0.
            *inv = 1.0 / sum.max(1) as f32;
        }
        let mut out = vec![0f32; QUERY_BLOCK * dh];
        // Keys in chunks that keep the i32 sums in range (see PROB_ONE); each chunk's sums,
        // times the row's 1/Σ and the column's scale, are added to the f32 output.
        for first_key in (0..t_pad).step_by(KEY_CHUNK) {
            let keys = KEY_CHUNK.min(t_pad - first_key);
            // SAFETY: as above; `first_key` and `keys` are even.
            unsafe {
                product_i16(
                    &probs[first_key..],
                    t_pad,
                    &self.values[first_key * dh..],
                    keys / 2,
                    (&inv_sums, &self.value_scales),
                    &mut out,
                    dh,
                    first_key > 0,
                );
            }
        }
        out
    }
}

/// `c = (a · b)[r][j] · row_scales[r] · col_scales[j]` (`c +=` if `accumulate`) in 16-bit
/// integers with i32 sums: `a` is QUERY_BLOCK rows of `2·pairs` values at row stride `lda`;
/// `b` is `pairs` steps of `n` columns × 2 interleaved values (step stride `2·n`), n = the
/// width of `c` (row stride `n`) and of `col_scales`.
///
/// # Safety
/// The CPU has AVX2; `a` holds QUERY_BLOCK rows of `2·pairs` values at stride `lda`, `b` holds
/// `pairs · 2n` values, `c` QUERY_BLOCK rows of `n`, `row_scales` QUERY_BLOCK values; `n` is a
/// multiple of NR.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn product_i16(
    a: &[i16],
    lda: usize,
    b: &[i16],
    pairs: usize,
    (row_scales, col_scales): (&[f32], &[f32]),
    c: &mut [f32],
    n: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= (QUERY_BLOCK - 1) * lda + 2 * pairs);
    debug_assert!(b.len() >= pairs * 2 * n && n.is_multiple_of(NR));
    debug_assert!(c.len() >= QUERY_BLOCK * n && col_scales.len() >= n);
    debug_assert!(row_scales.len() >= QUERY_BLOCK);
    let ldb = 2 * n;
    // Columns outer: a 16-column strip of `b` stays in L1 across all row tiles.
    for col in (0..n).step_by(NR) {
        let cs = [
            _mm256_loadu_ps(col_scales.as_ptr().add(col)),
            _mm256_loadu_ps(col_scales.as_ptr().add(col + 8)),
        ];
        for row in (0..QUERY_BLOCK).step_by(MR) {
            let a = a.as_ptr().add(row * lda);
            let b = b.as_ptr().add(2 * col);
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            for p in 0..pairs {
                let b0 = _mm256_loadu_si256(b.add(p * ldb) as *const __m256i);
                let b1 = _mm256_loadu_si256(b.add(p * ldb + 16) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x =
                        _mm256_set1_epi32((a.add(r * lda + 2 * p) as *const i32).read_unaligned());
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let rs = _mm256_set1_ps(row_scales[row + r]);
                let dst = c.as_mut_ptr().add((row + r) * n + col);
                for (u, (&acc, &cs)) in acc.iter().zip(&cs).enumerate() {
                    let scale = _mm256_mul_ps(rs, cs);
                    let base = if accumulate {
                        _mm256_loadu_ps(dst.add(8 * u))
                    } else {
                        _mm256_setzero_ps()
                    };
                    let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), scale, base);
                    _mm256_storeu_ps(dst.add(8 * u), v);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn product_i16(
    _: &[i16],
    _: usize,
    _: &[i16],
    _: usize,
    _: (&[f32], &[f32]),
    _: &mut [f32],
    _: usize,
    _: bool,
) {
    unreachable!("`available()` is false off x86-64")
}

/// The largest value of `row` (two vectors per step).
///
/// # Safety
/// The CPU has AVX2; `row.len()` is a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_max(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let p = row.as_ptr();
    let mut m = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for i in (0..row.len()).step_by(16) {
        m[0] = _mm256_max_ps(m[0], _mm256_loadu_ps(p.add(i)));
        m[1] = _mm256_max_ps(m[1], _mm256_loadu_ps(p.add(i + 8)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m[0], m[1]));
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `row[i] = exp(row[i] − max(row))` in place (the shared 8-lane exp, `elementwise::x86::Exp8`);
/// returns 1 / Σ row. Two vectors per step so the polynomial chains of neighbouring vectors
/// overlap.
///
/// # Safety
/// The CPU has AVX2 and FMA; `row.len()` is a multiple of 16 and not 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_row(row: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(!row.is_empty() && row.len().is_multiple_of(16));
    let max = _mm256_set1_ps(row_max(row));
    let p = row.as_mut_ptr();

    let exp = crate::elementwise::x86::Exp8::new();
    let mut sum = [_mm256_setzero_ps(); 2];
    for i in (0..row.len()).step_by(16) {
        for (u, sum) in sum.iter_mut().enumerate() {
            let e = exp.exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8 * u)), max));
            _mm256_storeu_ps(p.add(i + 8 * u), e);
            *sum = _mm256_add_ps(*sum, e);
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(sum[0], sum[1]));
    1.0 / lanes.iter().sum::<f32>()
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_row(_: &mut [f32]) -> f32 {
    unreachable!("`available()` is false off x86-64")
}

/// [`exp_row`] then [`round_row`] with `mul`, in one pass: `dst[i] = round(exp(row[i] −
/// max(row)) · mul)`, the same values bit for bit, without storing the f32 probabilities;
/// returns Σ dst.
///
/// # Safety
/// As [`exp_row`]; `dst` has `row`'s length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_round_row(row: &[f32], mul: f32, dst: &mut [i16]) -> i32 {
    use std::arch::x86_64::*;
    debug_assert!(!row.is_empty() && row.len().is_multiple_of(16) && dst.len() == row.len());
    let p = row.as_ptr();
    let max = _mm256_set1_ps(row_max(row));

    let exp = crate::elementwise::x86::Exp8::new();
    let scale = _mm256_set1_ps(mul);
    let out = dst.as_mut_ptr();
    // e ≤ 1, so every integer is in 0..=mul and the saturating pack never saturates: the sum
    // is taken of the i32 values.
    let round = |i: usize| {
        let e = exp.exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), max));
        _mm256_cvtps_epi32(_mm256_mul_ps(e, scale))
    };
    let mut sum = [_mm256_setzero_si256(); 2];
    let pair = |i: usize, sum: &mut __m256i| {
        let (a, b) = (round(i), round(i + 8));
        *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(a, b));
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        _mm256_storeu_si256(out.add(i) as *mut __m256i, packed);
    };
    // Two pairs of vectors per step (each exp is a chain of ~10 dependent FMAs); a pair packs
    // to 16 i16 in one pack and one lane permute.
    let whole = row.len() / 32 * 32;
    for i in (0..whole).step_by(32) {
        pair(i, &mut sum[0]);
        pair(i + 16, &mut sum[1]);
    }
    if whole < row.len() {
        pair(whole, &mut sum[0]);
    }
    let mut ints = [0i32; 8];
    let total = _mm256_add_epi32(sum[0], sum[1]);
    _mm256_storeu_si256(ints.as_mut_ptr() as *mut __m256i, total);
    ints.iter().sum()
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_round_row(_: &[f32], _: f32, _: &mut [i16]) -> i32 {
    unreachable!("`available()` is false off x86-64")
}

/// `c = a · b` (`c += a · b` if `accumulate`) for `a` (QUERY_BLOCK × k, row stride `lda`) and `b` (k × n, row stride `ldb`,
/// n = the width of `c`, a multiple of NR), `c` row stride `ldc`. One thread.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds QUERY_BLOCK rows of `k` values at stride `lda`, `b` holds
/// `k` rows of `ldc` values at stride `ldb`, `c` holds QUERY_BLOCK rows of `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(a.len() >= (QUERY_BLOCK - 1) * lda + k);
    debug_assert!(b.len() >= (k - 1) * ldb + ldc && ldc.is_multiple_of(NR));
    debug_assert!(c.len() >= QUERY_BLOCK * ldc);
    // Columns outer: a 16-column strip of `b` (k × 64 bytes) stays in L1 across all row tiles.
    for col in (0..ldc).step_by(NR) {
        for row in (0..QUERY_BLOCK).step_by(MR) {
            tile(
                a.as_ptr().add(row * lda),
                lda,
                b.as_ptr().add(col),
                ldb,
                k,
                c.as_mut_ptr().add(row * ldc + col),
                ldc,
                accumulate,
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    _: &[f32],
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: &mut [f32],
    _: usize,
    _: bool,
) {
    unreachable!("`available()` is false off x86-64")
}

/// One MR × NR tile of `c = a · b`: per step of k, two vectors of `b` and MR broadcasts of `a`
/// feed 12 FMAs into register accumulators (which start from `c` if `accumulate`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc[0] = _mm256_loadu_ps(c.add(r * ldc));
            acc[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
        }
    }
    for p in 0..k {
        let b0 = _mm256_loadu_ps(b.add(p * ldb));
        let b1 = _mm256_loadu_ps(b.add(p * ldb + 8));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
            acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * ldc), acc[0]);
        _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with a NaN, an infinity, only zeros or magnitudes too small to scale become zeros
    /// with scale 0, never saturated integers (which would break the i32 bounds).
    #[test]
    fn degenerate_rows_quantize_to_zero() {
        if !available() {
            return;
        }
        let mut row = vec![0f32; 16];
        row[3] = 0.5;
        let mut dst = vec![7i16; 16];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            row[5] = bad;
            // SAFETY: AVX2 is available; 16 values.
            assert_eq!(unsafe { quantize_row(&row, 5792.0, &mut dst) }, 0.0);
            assert!(dst.iter().all(|&d| d == 0), "{bad}: {dst:?}");
        }
        // A NaN before finite values (a fold with `f32::max` would forget it).
        row[5] = f32::NAN;
        row[6] = 0.7;
        assert_eq!(unsafe { quantize_row(&row, 5792.0, &mut dst) }, 0.0);
        assert!(dst.iter().all(|&d| d == 0), "{dst:?}");
        row[6] = 0.0;
        let tiny = vec![1e-38f32; 16];
        assert_eq!(unsafe { quantize_row(&tiny, 5792.0, &mut dst) }, 0.0);
        assert!(dst.iter().all(|&d| d == 0));
        row[5] = -1.0;
        let scale = unsafe { quantize_row(&row, 5792.0, &mut dst) };
        assert_eq!(scale, 1.0 / 5792.0);
        assert_eq!((dst[3], dst[5]), (2896, -5792));
    }

    /// The shared test values spread over [−3, 3): projections, and scores with a real softmax.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        crate::test_values(n, seed)
            .iter()
            .map(|v| v * 6.0)
            .collect()
    }

    /// The scale and integers `values` round to for `max` (scalar, the documented rule): the
    /// largest magnitude maps to `max`; NaN anywhere, ±∞, all zeros or a top too small to
    /// scale (`max / top` not finite) give scale 0 and zeros.
    fn reference_round(values: &[f32], max: f32) -> (f32, Vec<i16>) {
        let top = values.iter().fold(0f32, |a, v| {
            if a.is_nan() || v.is_nan() {
                f32::NAN
            } else {
                a.max(v.abs())
            }
        });
        if !(top > 0.0 && top.is_finite() && (max / top).is_finite()) {
            return (0.0, vec![0; values.len()]);
        }
        let ints = values
            .iter()
            .map(|v| (v * (max / top)).round_ties_even() as i16)
            .collect();
        (top / max, ints)
    }

    /// The vectorized packing gives the layout `product_i16` reads, bit for bit: keys rounded
    /// per key, pairs of head columns interleaved per key; values rounded per head column,
    /// pairs of keys interleaved per column; non-finite rows and columns as zeros.
    #[test]
    fn int16_packing_matches_the_layout() {
        if !available() {
            return;
        }
        let (t, d, heads): (usize, usize, usize) = (37, 64, 2);
        let dh = d / heads;
        let t_pad = t.div_ceil(NR) * NR;
        let mut qkv = noise(t * 3 * d, 7);
        // NaNs early in a key row and a value column (finite values after them), an infinite
        // value in column 3 of head 0, a zero value column 5, a column 9 too small to scale.
        qkv[4 * 3 * d + d + 1] = f32::NAN;
        qkv[2 * 3 * d + 2 * d + 7] = f32::NAN;
        qkv[9 * 3 * d + 2 * d + 3] = f32::INFINITY;
        for j in 0..t {
            qkv[j * 3 * d + 2 * d + 5] = 0.0;
            qkv[j * 3 * d + 2 * d + 9] = 1e-39;
        }
        for h in 0..heads {
            let view = HeadView {
                qkv: &qkv,
                t,
                d,
                t_pad,
                dh,
                col: h * dh,
            };
            let packed = I16Head::pack(view);
            let max = qk_max(dh);
            for j in 0..t_pad {
                let row: Vec<f32> = if j < t {
                    view.row(j, 1).to_vec()
                } else {
                    vec![0.0; dh]
                };
                let (scale, ints) = reference_round(&row, max);
                assert_eq!(packed.key_scales[j].to_bits(), scale.to_bits(), "key {j}");
                for (c, &want) in ints.iter().enumerate() {
                    let got = packed.keys[((c / 2) * t_pad + j) * 2 + c % 2];
                    assert_eq!(got, want, "key {j} col {c}");
                }
            }
            for c in 0..dh {
                let mut column: Vec<f32> = (0..t).map(|j| view.row(j, 2)[c]).collect();
                let (scale, _) = reference_round(&column, VALUE_MAX);
                assert_eq!(
                    packed.value_scales[c].to_bits(),
                    scale.to_bits(),
                    "column {c}"
                );
                column.resize(t_pad, 0.0);
                let (_, ints) = reference_round(&column, VALUE_MAX);
                for (j, &want) in ints.iter().enumerate() {
                    let got = packed.values[((j / 2) * dh + c) * 2 + j % 2];
                    assert_eq!(got, want, "value {j} col {c}");
                }
            }
        }
    }

    /// The fused pass gives `exp_row` then `round_row`, bit for bit, with the same sum.
    #[test]
    fn fused_exp_round_equals_the_two_passes() {
        if !available() {
            return;
        }
        for (len, live) in [(16, 16), (48, 37), (1504, 1500), (64, 1)] {
            let mut row = noise(len, len as u64);
            row[live..].fill(f32::NEG_INFINITY);
            let (mut fused, mut two) = (vec![0i16; len], vec![0i16; len]);
            // SAFETY: AVX2 and FMA are available; lengths are multiples of 16.
            let sum = unsafe { exp_round_row(&row, PROB_ONE, &mut fused) };
            let mut probs = row.clone();
            let want = unsafe {
                exp_row(&mut probs);
                round_row(&probs, PROB_ONE, &mut two)
            };
            assert_eq!(fused, two, "{len}");
            assert_eq!(sum, want, "{len}");
            assert!(fused[live..].iter().all(|&p| p == 0));
        }
    }
}
