//! The encoder's self-attention in f32 on AVX2 + FMA, fused per (head, block of query rows).
//!
//! Done as candle ops, a head's `q·kᵀ` is a 1500 × 1500 score matrix (9 MB) that goes through
//! memory three times (matmul out, softmax, matmul in), and candle's GEMM reaches ~67 GFLOP/s
//! on that thin shape. Here each task computes 48 rows of scores (288 KB, held in the core's
//! L2), exponentiates them in place (the 8-lane FMA form of the one `exp`; the scalar one, auto-vectorized
//! without FMA, took a quarter of the attention's time), multiplies them by the head's values
//! with the same FMA microkernel, and scales each output row by its 1/Σ. Used by every encoder
//! path but AMX's (which has its own, in bf16); same arithmetic as the unfused version up to
//! summation order and the exp's last bits.

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
        attend_window(&qkv[w * t * 3 * d..][..t * 3 * d], t, d, heads, y);
    }
}

/// One window: `qkv` is `(t, 3·d)`, `y` is `(t, d)`.
fn attend_window(qkv: &[f32], t: usize, d: usize, heads: usize, y: &mut [f32]) {
    let dh = d / heads;
    let d3 = 3 * d;
    // Keys padded with zero columns to whole tiles (their scores are dropped before the
    // softmax); values with zero rows to match (their probabilities are zero).
    let t_pad = t.div_ceil(NR) * NR;
    let packed: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut keys_t = vec![0f32; dh * t_pad];
            let mut values = vec![0f32; t_pad * dh];
            for j in 0..t {
                let row = &qkv[j * d3..][..d3];
                for (c, &k) in row[d + h * dh..][..dh].iter().enumerate() {
                    keys_t[c * t_pad + j] = k;
                }
                values[j * dh..][..dh].copy_from_slice(&row[2 * d + h * dh..][..dh]);
            }
            (keys_t, values)
        })
        .collect();
    let blocks = t.div_ceil(QUERY_BLOCK);
    // Head-major task order: consecutive tasks on a core reuse that head's keys and values.
    let outs: Vec<Vec<f32>> = (0..heads * blocks)
        .into_par_iter()
        .map_init(
            || {
                (
                    vec![0f32; QUERY_BLOCK * dh],
                    vec![0f32; QUERY_BLOCK * t_pad],
                )
            },
            |(queries, scores), task| {
                let (h, block) = (task / blocks, task % blocks);
                let first = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(t - first);
                // Rows past `rows` of a last, partial block are zero queries: uniform
                // probabilities, computed and dropped.
                queries.fill(0.0);
                for (r, dst) in queries.chunks_exact_mut(dh).take(rows).enumerate() {
                    dst.copy_from_slice(&qkv[(first + r) * d3 + h * dh..][..dh]);
                }
                let (keys_t, values) = &packed[h];
                let mut out = vec![0f32; QUERY_BLOCK * dh];
                // SAFETY: `available()` was checked by `attention`; every operand covers the tiles
                // the calls read and write (QUERY_BLOCK rows, t_pad and dh multiples of NR).
                unsafe {
                    product(queries, dh, keys_t, t_pad, dh, scores, t_pad, false);
                }
                // Unnormalized probabilities (the padded keys' scores become −∞, so 0); each
                // row's 1/Σ scales its output below, 64 values instead of 1500.
                let mut inv_sums = [0f32; QUERY_BLOCK];
                for (row, inv) in scores.chunks_exact_mut(t_pad).zip(&mut inv_sums) {
                    row[t..].fill(f32::NEG_INFINITY);
                    // SAFETY: as above; the row's length is a multiple of NR.
                    *inv = unsafe { exp_row(row) };
                }
                // Keys in chunks, so a chunk of values (KEY_CHUNK × dh) stays in L1 while
                // every row tile uses it; from L2 the loads of `b` stalled the FMAs.
                for first_key in (0..t_pad).step_by(KEY_CHUNK) {
                    let keys = KEY_CHUNK.min(t_pad - first_key);
                    unsafe {
                        product(
                            &scores[first_key..],
                            t_pad,
                            &values[first_key * dh..],
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
    let p = row.as_mut_ptr();
    let mut m = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for i in (0..row.len()).step_by(16) {
        m[0] = _mm256_max_ps(m[0], _mm256_loadu_ps(p.add(i)));
        m[1] = _mm256_max_ps(m[1], _mm256_loadu_ps(p.add(i + 8)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m[0], m[1]));
    let max = _mm256_set1_ps(lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)));

    let exp = crate::elementwise::x86::Exp8::new();
    let mut sum = [_mm256_setzero_ps(); 2];
    for i in (0..row.len()).step_by(16) {
        for (u, sum) in sum.iter_mut().enumerate() {
            let e = exp.exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8 * u)), max));
            _mm256_storeu_ps(p.add(i + 8 * u), e);
            *sum = _mm256_add_ps(*sum, e);
        }
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(sum[0], sum[1]));
    1.0 / lanes.iter().sum::<f32>()
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_row(_: &mut [f32]) -> f32 {
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
