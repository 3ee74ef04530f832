//! The encoder's 1500-row projections in 16-bit integers, for `--precision q8` on x86 CPUs
//! without AMX (AVX2: every AMD EPYC before Zen 4, Intel before Sapphire Rapids).
//!
//! There the f32 GEMM is the floor of every request: one tiny.en window is ~37 GFLOP, ~510 ms on
//! two AMD Zen 3 cores, two thirds of it in these projections. `vpmaddwd` multiplies 16 pairs
//! of i16 and adds neighbours into 8 i32 per instruction: twice the multiplies of an 8-lane f32
//! FMA, on the same two pipes.
//!
//! Numerics: weights are quantized per output row to 10 bits (±511, one f32 scale per row; int8
//! cost +0.3 WER points on the eval set's long-form file, 10 bits none), held as i16. Each input
//! row is quantized on the fly with its own scale to as many bits as keep every sum over the
//! inner dimension inside i32 (12 bits at tiny's widest, 1536). Sums are exact integers; the
//! result is `sum · scale_row · scale_weight + bias` in f32.

use candle_core::{Tensor, D};
use candle_nn::Linear;
use rayon::prelude::*;

use crate::model::simd::Tier;

/// i16 per vector: the inner dimension is padded with zeros to a multiple of it.
const LANES: usize = 16;
/// Largest weight magnitude (10 bits).
const W_MAX: i32 = 511;
/// Largest activation magnitude (14 bits), where the inner dimension allows it.
const A_MAX: i32 = 8191;
/// Rows and columns per register tile (3 × 3 accumulators + 3 row vectors + 2 temporaries
/// fit AVX2's 16 registers).
const MR: usize = 3;
const NR: usize = 3;
/// Rows per task, and columns per pass over those rows: a task's rows and one pass's weights
/// stay in a core's L2 for k up to 1536 (48 × 1536 × 2 B = 147 KB each).
const ROW_BLOCK: usize = 48;
const COL_BLOCK: usize = 48;

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    Tier::available().contains(&Tier::Avx2)
}

/// `y = x·Wᵀ + b` with integer weights and activations (see the module docs).
pub struct IntLinear {
    out: usize,
    inp: usize,
    /// `inp` rounded up to [`LANES`].
    k: usize,
    /// `(out, k)` row-major, zero-padded.
    w: Vec<i16>,
    w_scale: Vec<f32>,
    bias: Vec<f32>,
    /// Activation range: the largest `a` with `k · a · W_MAX` ≤ i32::MAX, at most [`A_MAX`].
    a_max: i32,
}

impl IntLinear {
    pub fn new(l: &Linear) -> candle_core::Result<Self> {
        let (out, inp) = l.weight().dims2()?;
        let weight = l.weight().flatten_all()?.to_vec1::<f32>()?;
        let bias = match l.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; out],
        };
        Ok(Self::from_rows(&weight, out, inp, bias))
    }

    fn from_rows(weight: &[f32], out: usize, inp: usize, bias: Vec<f32>) -> Self {
        let k = inp.next_multiple_of(LANES);
        let mut w = vec![0i16; out * k];
        let mut w_scale = vec![0f32; out];
        for ((src, dst), scale) in weight
            .chunks_exact(inp)
            .zip(w.chunks_exact_mut(k))
            .zip(w_scale.iter_mut())
        {
            *scale = quantize(src, &mut dst[..inp], W_MAX);
        }
        let a_max = (i32::MAX as i64 / (k as i64 * W_MAX as i64)).min(A_MAX as i64) as i32;
        Self {
            out,
            inp,
            k,
            w,
            w_scale,
            bias,
            a_max,
        }
    }

    /// `x` `(…, inp)` f32 on the CPU → `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let inp = x.dim(D::Minus1)?;
        if inp != self.inp {
            candle_core::bail!("projection expects {} inputs, got {inp}", self.inp);
        }
        let rows = x.elem_count() / inp.max(1);
        let y = super::rowmatmul::with_f32(x, |xs| self.forward_rows(Tier::best(), xs, rows))?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out;
        }
        Tensor::from_vec(y, dims, x.device())
    }

    /// `x` `(rows, inp)` row-major → `(rows, out)`, on the kernels of `tier`.
    fn forward_rows(&self, tier: Tier, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(
            Tier::available().contains(&tier),
            "{tier:?} kernels need CPU features this one lacks"
        );
        let (n, k) = (self.out, self.k);
        if rows == 0 || n == 0 {
            return vec![0.0; rows * n];
        }
        let mut a = vec![0i16; rows * k];
        let mut a_scale = vec![0f32; rows];
        a.par_chunks_mut(k)
            .zip(x.par_chunks_exact(self.inp))
            .zip(a_scale.par_iter_mut())
            .for_each(|((dst, src), s)| *s = quantize(src, &mut dst[..self.inp], self.a_max));
        let mut y = vec![0f32; rows * n];
        y.par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(|(block, y)| {
                let r0 = block * ROW_BLOCK;
                let nrows = y.len() / n;
                self.row_block(tier, &a[r0 * k..][..nrows * k], &a_scale[r0..][..nrows], y);
            });
        y
    }

    /// One task: `nrows` quantized rows → their output rows `y`.
    fn row_block(&self, tier: Tier, a: &[i16], a_scale: &[f32], y: &mut [f32]) {
        let (n, k) = (self.out, self.k);
        let nrows = a_scale.len();
        let mut sums = [[0i32; NR]; MR];
        for c0 in (0..n).step_by(COL_BLOCK) {
            let c1 = (c0 + COL_BLOCK).min(n);
            for r in (0..nrows).step_by(MR) {
                let mr = (nrows - r).min(MR);
                for c in (c0..c1).step_by(NR) {
                    let nr = (c1 - c).min(NR);
                    dot_tile(
                        tier,
                        &a[r * k..][..mr * k],
                        &self.w[c * k..][..nr * k],
                        k,
                        &mut sums,
                    );
                    for (i, row) in sums.iter().enumerate().take(mr) {
                        let out = &mut y[(r + i) * n..][..n];
                        for (j, &s) in row.iter().enumerate().take(nr) {
                            out[c + j] = s as f32 * (a_scale[r + i] * self.w_scale[c + j])
                                + self.bias[c + j];
                        }
                    }
                }
            }
        }
    }
}

/// Symmetric quantization of `src` to `±max` into `dst`; returns the scale (value per step).
fn quantize(src: &[f32], dst: &mut [i16], max: i32) -> f32 {
    #[inline(always)]
    fn body(src: &[f32], dst: &mut [i16], max: i32) -> f32 {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            dst.fill(0);
            return 0.0;
        }
        let (inv, lim) = (max as f32 / amax, max as f32);
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v * inv).round_ties_even().clamp(-lim, lim) as i16;
        }
        amax / lim
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Vectorized rounding needs SSE4.1 (the baseline build calls libm per value).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(src: &[f32], dst: &mut [i16], max: i32) -> f32 {
            body(src, dst, max)
        }
        if available() {
            // SAFETY: `available` checked AVX2.
            return unsafe { avx2(src, dst, max) };
        }
    }
    body(src, dst, max)
}

/// `sums[i][j] = Σₖ a[i][k]·w[j][k]` for the `a.len() / k` (≤ [`MR`]) rows of `a` and the
/// `w.len() / k` (≤ [`NR`]) rows of `w`.
fn dot_tile(tier: Tier, a: &[i16], w: &[i16], k: usize, sums: &mut [[i32; NR]; MR]) {
    let (mr, nr) = (a.len() / k, w.len() / k);
    assert!(mr <= MR && nr <= NR && k.is_multiple_of(LANES));
    #[cfg(target_arch = "x86_64")]
    if tier != Tier::Portable {
        // SAFETY: AVX2 is in every non-portable tier (`Tier::available`); the slices hold
        // `mr` and `nr` rows of `k` (asserted above).
        unsafe {
            match (mr, nr) {
                (3, 3) => return avx2::tile::<3, 3>(a.as_ptr(), w.as_ptr(), k, sums),
                (3, 2) => return avx2::tile::<3, 2>(a.as_ptr(), w.as_ptr(), k, sums),
                (3, 1) => return avx2::tile::<3, 1>(a.as_ptr(), w.as_ptr(), k, sums),
                (2, 3) => return avx2::tile::<2, 3>(a.as_ptr(), w.as_ptr(), k, sums),
                (2, 2) => return avx2::tile::<2, 2>(a.as_ptr(), w.as_ptr(), k, sums),
                (2, 1) => return avx2::tile::<2, 1>(a.as_ptr(), w.as_ptr(), k, sums),
                (1, 3) => return avx2::tile::<1, 3>(a.as_ptr(), w.as_ptr(), k, sums),
                (1, 2) => return avx2::tile::<1, 2>(a.as_ptr(), w.as_ptr(), k, sums),
                (1, 1) => return avx2::tile::<1, 1>(a.as_ptr(), w.as_ptr(), k, sums),
                _ => {}
            }
        }
    }
    let _ = tier;
    for (i, row) in sums.iter_mut().enumerate().take(mr) {
        for (j, s) in row.iter_mut().enumerate().take(nr) {
            *s = a[i * k..][..k]
                .iter()
                .zip(&w[j * k..][..k])
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 present; `a` and `w` point to `R` and `C` rows of `k` (a multiple of 16) i16.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        a: *const i16,
        w: *const i16,
        k: usize,
        sums: &mut [[i32; super::NR]; super::MR],
    ) {
        let mut acc: [[__m256i; C]; R] = std::mem::zeroed();
        let mut av: [__m256i; R] = std::mem::zeroed();
        let mut i = 0;
        while i < k {
            for r in 0..R {
                av[r] = _mm256_loadu_si256(a.add(r * k + i) as *const __m256i);
            }
            for c in 0..C {
                let wv = _mm256_loadu_si256(w.add(c * k + i) as *const __m256i);
                for r in 0..R {
                    acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av[r], wv));
                }
            }
            i += 16;
        }
        for r in 0..R {
            for c in 0..C {
                let v = acc[r][c];
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
                sums[r][c] = _mm_cvtsi128_si32(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as values;

    /// Every tier gives the exact integer sums of the quantized operands (so the same result),
    /// and that result is within the quantization error of the f32 product, for shapes with
    /// partial tiles, partial blocks and an inner dimension that is not a multiple of 16.
    #[test]
    fn matches_f32_within_quantization_error_on_every_tier() {
        for (rows, out, inp) in [(1, 1, 16), (7, 5, 40), (50, 100, 384), (97, 49, 240)] {
            let w = values(out * inp, 1);
            let b = values(out, 2);
            let x = values(rows * inp, 4);
            let l = IntLinear::from_rows(&w, out, inp, b.clone());
            let mut want = vec![0f64; rows * out];
            for r in 0..rows {
                for c in 0..out {
                    want[r * out + c] = b[c] as f64
                        + (0..inp)
                            .map(|i| x[r * inp + i] as f64 * w[c * inp + i] as f64)
                            .sum::<f64>();
                }
            }
            let portable = l.forward_rows(Tier::Portable, &x, rows);
            for &tier in Tier::available() {
                let got = l.forward_rows(tier, &x, rows);
                assert_eq!(got, portable, "{tier:?} differs from the portable sums");
            }
            // Weights: half a step (amax / 2·W_MAX, amax ≤ 0.5) per weight, times |x| ≤ 0.5, over
            // inp terms of random sign: ~6 standard deviations.
            let bound = 0.5 / W_MAX as f64 * 0.5 * (inp as f64).sqrt() * 2.0;
            for (i, (g, w)) in portable.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < bound,
                    "rows {rows} out {out} inp {inp}: [{i}] {g} vs {w} (bound {bound})"
                );
            }
        }
    }

    /// The activation range shrinks with the inner dimension so that sums cannot overflow.
    #[test]
    fn activation_range_keeps_sums_in_i32() {
        for inp in [16, 384, 1536, 2048, 5120, 20480] {
            let l = IntLinear::from_rows(&vec![0.5; inp], 1, inp, vec![0.0]);
            assert!(l.a_max >= 1 && l.a_max <= A_MAX);
            assert!((l.k as i64) * (l.a_max as i64) * (W_MAX as i64) <= i32::MAX as i64);
            // The worst case: every product at its largest.
            let x = vec![1.0f32; inp];
            let y = l.forward_rows(Tier::best(), &x, 1);
            assert!(
                (y[0] - 0.5 * inp as f32).abs() < 1e-3 * inp as f32,
                "{inp}: {}",
                y[0]
            );
        }
    }
}
