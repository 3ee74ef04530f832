//! The elementwise hot spots: row softmax (the 1500 × 1500 attention scores of every head of the
//! unfused encoder attention), the erf GELU of the MLPs, `log Σ exp` over logits and the
//! unnormalized bf16 softmax of the AMX attention. Profiling a window with candle's own ops
//! showed ~40 % of encoder time in libm `expf`/`erff` called one value at a time; these versions
//! are branch-free polynomials that LLVM vectorizes to 16 lanes when the CPU has AVX-512
//! (checked at run time), with the same code compiled for the baseline as fallback.
//!
//! Accuracy: `exp` is within 2 ulp over the f32 range, `erf` within 5e-7 absolute
//! (a rational fit), both far below the f32 noise of the
//! matmuls around them; the parity tests check tokens and features against the references.

use rayon::prelude::*;

use crate::isa::Tier;

/// Rows (or elements / 1024) below which threading costs more than it saves.
const PAR_MIN_ROWS: usize = 64;
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Softmax of every `n`-long row of `buf` in place, threaded over rows when there are many.
/// A fully masked row (all −∞) becomes uniform.
pub fn softmax_rows_par(buf: &mut [f32], n: usize) {
    let n = n.max(1);
    let rows = buf.len() / n;
    if rows >= PAR_MIN_ROWS {
        let chunk = n * rows.div_ceil(rayon::current_num_threads() * 4).max(16);
        buf.par_chunks_mut(chunk).for_each(|c| softmax_rows(c, n));
    } else {
        softmax_rows(buf, n);
    }
}

/// `0.5·x·(1 + erf(x/√2))`, Whisper's GELU, in place, threaded when `buf` is large.
pub fn gelu_par(buf: &mut [f32]) {
    if buf.len() >= PAR_MIN_ELEMS {
        let chunk = buf.len().div_ceil(rayon::current_num_threads() * 4);
        let chunk = chunk.div_ceil(16) * 16;
        buf.par_chunks_mut(chunk).for_each(gelu_slice);
    } else {
        gelu_slice(buf);
    }
}

kernel!(
    /// Softmax of every `n`-long row of `buf` in place (one thread).
    pub fn softmax_rows / softmax_rows_on(buf: &mut [f32], n: usize) {
    for row in buf.chunks_exact_mut(n) {
        softmax_row(row);
    }
});

/// The unnormalized half of a softmax, for the AMX encoder's attention: for each row of
/// `scores` (the first `n` of every `stride` values), `e = exp(s − max)` written as bf16 to the
/// row of `out` (stride `out_stride`; its other columns are left alone) and `1 / Σe` to
/// `inv_sums` (one per row, which also sets how many rows). The caller scales the product
/// `e · V` by it: normalizing 32 × 64 outputs after the matmul instead of 32 × 1500
/// probabilities before it saves a pass, and bf16 keeps the same relative precision either way.
/// One thread: the caller runs many of these at once.
pub fn exp_to_bf16(
    scores: &[f32],
    stride: usize,
    n: usize,
    out: &mut [u16],
    out_stride: usize,
    inv_sums: &mut [f32],
) {
    exp_to_bf16_on(Tier::best(), scores, stride, n, out, out_stride, inv_sums)
}

/// [`exp_to_bf16`] on the kernels of `tier` (one of [`Tier::available`]): AVX512-BF16 or
/// portable.
pub fn exp_to_bf16_on(
    tier: Tier,
    scores: &[f32],
    stride: usize,
    n: usize,
    out: &mut [u16],
    out_stride: usize,
    inv_sums: &mut [f32],
) {
    let rows = inv_sums.len();
    assert!(
        n <= stride.min(out_stride)
            && scores.len() >= rows.saturating_sub(1) * stride + n
            && out.len() >= rows.saturating_sub(1) * out_stride + n,
        "softmax rows out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if tier >= Tier::Avx512Bf16 {
        // SAFETY: `tier` is available (the caller's contract); the bounds were checked above.
        return unsafe { avx512::exp_to_bf16(scores, stride, n, out, out_stride, inv_sums) };
    }
    let _ = tier;
    exp_to_bf16_portable(scores, stride, n, out, out_stride, inv_sums)
}

fn exp_to_bf16_portable(
    scores: &[f32],
    stride: usize,
    n: usize,
    out: &mut [u16],
    out_stride: usize,
    inv_sums: &mut [f32],
) {
    for (r, inv) in inv_sums.iter_mut().enumerate() {
        let row = &scores[r * stride..][..n];
        let max = max_of(row);
        let mut sum = 0.0;
        for (d, &v) in out[r * out_stride..][..n].iter_mut().zip(row) {
            let e = exp(v - max);
            sum += e;
            *d = crate::bf16::bf16(e);
        }
        *inv = 1.0 / sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::x86::exp16_nonpositive as exp_nonpositive;
    use std::arch::x86_64::*;

    /// See [`super::exp_to_bf16`]; bounds are checked there.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn exp_to_bf16(
        scores: &[f32],
        stride: usize,
        n: usize,
        out: &mut [u16],
        out_stride: usize,
        inv_sums: &mut [f32],
    ) {
        let (full, tail) = (n / 16, n % 16);
        let mask: __mmask16 = ((1u32 << tail) - 1) as u16;
        for (r, inv) in inv_sums.iter_mut().enumerate() {
            let row = scores.as_ptr().add(r * stride);
            let dst = out.as_mut_ptr().add(r * out_stride);
            // Four running maxima: one would wait on each max's latency.
            let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
            for i in 0..full {
                m[i % 4] = _mm512_max_ps(m[i % 4], _mm512_loadu_ps(row.add(16 * i)));
            }
            let tail_v =
                _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask, row.add(16 * full));
            let m = _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3]));
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m, tail_v)));
            let mut sum = _mm512_setzero_ps();
            for i in 0..full {
                let e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * i)), max));
                sum = _mm512_add_ps(sum, e);
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
                _mm256_storeu_si256(dst.add(16 * i) as *mut __m256i, b);
            }
            if tail > 0 {
                let e = _mm512_maskz_mov_ps(mask, exp_nonpositive(_mm512_sub_ps(tail_v, max)));
                sum = _mm512_add_ps(sum, e);
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
                _mm256_mask_storeu_epi16(dst.add(16 * full) as *mut i16, mask, b);
            }
            *inv = 1.0 / _mm512_reduce_add_ps(sum);
        }
    }
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = max_of(row);
    if max == f32::NEG_INFINITY {
        // A fully masked row; candle's softmax gives NaN here, uniform is kinder.
        row.fill(1.0 / row.len() as f32);
        return;
    }
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum_of(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

kernel!(
    /// Whisper's erf GELU of every value of `buf` in place (one thread).
    pub fn gelu_slice / gelu_slice_on(buf: &mut [f32]) {
    for v in buf.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
});

kernel!(
    /// One LSTM time step for a batch, after the gate pre-activations are summed:
    /// `gates` is `[row][4·hidden]` in PyTorch's order (input, forget, cell, output); each
    /// row's cell state `c` and hidden state `h` (`[row][hidden]`) are updated in place:
    /// `c = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`.
    pub fn lstm_cell / lstm_cell_on(gates: &[f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    for ((g, c), h) in gates
        .chunks_exact(4 * hidden)
        .zip(c.chunks_exact_mut(hidden))
        .zip(h.chunks_exact_mut(hidden))
    {
        let (gi, rest) = g.split_at(hidden);
        let (gf, rest) = rest.split_at(hidden);
        let (gg, go) = rest.split_at(hidden);
        for k in 0..hidden {
            let cell = sigmoid(gf[k]) * c[k] + sigmoid(gi[k]) * tanh(gg[k]);
            c[k] = cell;
            h[k] = sigmoid(go[k]) * tanh(cell);
        }
    }
});

/// `1 / (1 + e^−x)`, through the vectorizable `exp`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh x = 1 − 2 / (e^{2x} + 1)`: exact at 0 and ±∞, within ~1e-7 absolute elsewhere.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

#[inline(always)]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = max_of(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum_of(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// 16 independent lanes so the reduction vectorizes without reassociation flags.
#[inline(always)]
pub(crate) fn max_of(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for v in lanes {
        m = m.max(v);
    }
    m
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    tail + lanes.iter().sum::<f32>()
}

#[inline(always)]
pub(crate) fn sum_of(s: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] += c[i];
        }
    }
    chunks.remainder().iter().sum::<f32>() + lanes.iter().sum::<f32>()
}

kernel!(
    /// The largest value of `xs`, NaN skipped; −∞ for an empty slice. The decoding loop takes
    /// it over the text logits of every sequence at every step (the timestamp rule): a scalar
    /// `fold(f32::max)` is one dependent `maxss` per logit, ~47 µs over tiny.en's 50,000.
    pub fn max_value / max_value_on(xs: &[f32]) -> f32 {
    max_of(xs)
});

// `log(Σ exp(x))`, stable; −inf for an empty or all −inf slice. Vectorized: the decoding loop
// runs it over the ~52k logits of every sequence at every step (libm's scalar `expf` made
// token selection a tenth of a batched step, with the compute threads idle meanwhile).
kernel!(
    /// `log(Σ exp(x))`, stable; −inf for an empty or all −inf slice.
    pub fn log_sum_exp / log_sum_exp_on(xs: &[f32]) -> f32 {
    let max = max_of(xs);
    if !max.is_finite() {
        return f32::NEG_INFINITY;
    }
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] += exp(c[i] - max);
        }
    }
    let rest: f32 = chunks.remainder().iter().map(|&x| exp(x - max)).sum();
    max + (lanes.iter().sum::<f32>() + rest).ln()
});

/// ln 2 split in two, so `x − n·ln2` keeps its low bits (shared with the fused attention's exp).
pub(crate) const EXP_LN2_HI: f32 = 0.693_145_75;
pub(crate) const EXP_LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2^23: adding it rounds to nearest, and the sum's low mantissa bits hold the integer.
pub(crate) const EXP_MAGIC: f32 = 12_582_912.0;
/// e^r ≈ Σ EXP_POLY[i]·rⁱ for |r| ≤ ln2/2 (Taylor, degree 6; relative error ~1e-7).
pub(crate) const EXP_POLY: [f32; 7] = [
    1.0,
    1.0,
    0.5,
    0.166_666_67,
    0.041_666_668,
    0.008_333_334,
    0.001_388_889,
];

/// e^x: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^n through the exponent
/// bits. Inputs below −87.3 (including −∞) give 0, above 88.7 give +∞ (through the clamp: 2^128).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = EXP_MAGIC; // (also subtracted from the bits below)
    let c = EXP_POLY;
    let xc = x.clamp(-87.33, 88.72);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = xc - n * EXP_LN2_HI - n * EXP_LN2_LO;
    let p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * c[6])))));
    // The low mantissa bits of `shifted` hold n itself; reading them (instead of `n as i32`,
    // a saturating conversion LLVM will not vectorize) keeps the whole function in vectors.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    let y = p * scale;
    if x < -87.33 {
        0.0
    } else {
        y
    }
}

/// The same e^x in vectors, for the kernels written with intrinsics (the scalar [`exp`] is the
/// portable version and the reference).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{EXP_LN2_HI, EXP_LN2_LO, EXP_MAGIC, EXP_POLY};
    use std::arch::x86_64::*;

    /// [`super::exp`] in 8 lanes with FMA (its constants, held in registers across a loop):
    /// `x ≥ −87.3` is reduced to `n·ln2 + r` (|r| ≤ ln2/2), `e^r` is the degree-6 polynomial,
    /// `2^n` goes into the exponent bits; below −87.3 (−∞ included) gives exactly 0.
    #[derive(Clone, Copy)]
    pub(crate) struct Exp8 {
        floor: __m256,
        log2e: __m256,
        magic: __m256,
        ln2_hi: __m256,
        ln2_lo: __m256,
        c: [__m256; 7],
        bias: __m256i,
    }

    impl Exp8 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub(crate) fn new() -> Self {
            Self {
                floor: _mm256_set1_ps(-87.33),
                log2e: _mm256_set1_ps(std::f32::consts::LOG2_E),
                magic: _mm256_set1_ps(EXP_MAGIC),
                ln2_hi: _mm256_set1_ps(EXP_LN2_HI),
                ln2_lo: _mm256_set1_ps(EXP_LN2_LO),
                c: EXP_POLY.map(|v| _mm256_set1_ps(v)),
                bias: _mm256_set1_epi32(127 << 23),
            }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub(crate) fn exp(&self, x: __m256) -> __m256 {
            let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, self.floor);
            let x = _mm256_max_ps(x, self.floor);
            let t = _mm256_fmadd_ps(x, self.log2e, self.magic);
            let n = _mm256_sub_ps(t, self.magic);
            let r = _mm256_fnmadd_ps(n, self.ln2_lo, _mm256_fnmadd_ps(n, self.ln2_hi, x));
            let mut y = self.c[6];
            for &k in self.c[..6].iter().rev() {
                y = _mm256_fmadd_ps(y, r, k);
            }
            // (bits of t) << 23 is n << 23: the magic constant's bits shift out.
            let scale =
                _mm256_add_epi32(_mm256_slli_epi32::<23>(_mm256_castps_si256(t)), self.bias);
            _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(scale)), keep)
        }
    }

    /// e^x for x ≤ 0 in 16 lanes, for bf16 outputs: the same reduction with [`EXP_POLY`]
    /// truncated to degree 5 (relative error < 3e-6, far below bf16's 4e-3), then `scalef`
    /// multiplies by 2^k (and flushes what underflows to 0). Fused multiply-adds throughout.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp16_nonpositive(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-100.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_LN2_HI), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[5]);
        for &c in EXP_POLY[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, k)
    }
}

/// erf(x) as x·P(x²)/Q(x²) on [−4, 4] (beyond, erf is ±1 in f32): a rational minimax fit
/// (the one Eigen and XLA use for f32), a few ulp from the true value.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10_f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 - 2.101_024e-6;
    let p = p * x2 - 5.692_506_4e-5;
    let p = p * x2 - 7.349_906_3e-4;
    let p = p * x2 - 2.954_600_1e-3;
    let p = p * x2 - 1.609_603_3e-2;
    let q = -1.456_607_2e-5_f32;
    let q = q * x2 - 2.133_740_6e-4;
    let q = q * x2 - 1.682_827e-3;
    let q = q * x2 - 7.373_329_2e-3;
    let q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (harness)
    pub(crate) fn log_sum_exp_f64(tier: Tier) {
        let log_sum_exp = |xs: &[f32]| log_sum_exp_on(tier, xs);
        // A vocabulary-sized row (not a multiple of 16) with suppressed (−inf) entries.
        let xs: Vec<f32> = (0..51_865)
            .map(|i| {
                if i % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 2000) as f32 / 100.0 - 10.0
                }
            })
            .collect();
        let max = xs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, |a, x| a.max(x as f64));
        let want = max + xs.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let got = log_sum_exp(&xs) as f64;
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
        assert!((log_sum_exp(&[0.0, 0.0]) - 2f32.ln()).abs() < 1e-6);
    }

    /// The vectorized maximum is a scalar `fold(f32::max)`'s (harness): NaN skipped wherever
    /// it lies, −∞ entries, lengths around the 16 lanes, the maximum in the tail.
    pub(crate) fn max_value_is_the_fold(tier: Tier) {
        for n in [0, 1, 15, 16, 17, 33, 51_865] {
            for nan_at in [None, Some(0), Some(n / 2)] {
                let mut xs: Vec<f32> = (0..n)
                    .map(|i| match i % 7 {
                        3 => f32::NEG_INFINITY,
                        _ => ((i * 7919) % 2000) as f32 / 100.0 - 10.0,
                    })
                    .collect();
                if n > 0 {
                    xs[n - 1] = 11.0 + n as f32; // the largest, in the tail
                }
                if let Some(j) = nan_at.filter(|&j| j < n) {
                    xs[j] = f32::NAN;
                }
                let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(max_value_on(tier, &xs), want, "n {n}, NaN at {nan_at:?}");
            }
        }
        assert_eq!(
            max_value_on(tier, &[f32::NEG_INFINITY; 20]),
            f32::NEG_INFINITY
        );
    }

    /// The LSTM step against f64 (harness): gates from −30 to 30, a hidden size with a
    /// 16-lane tail.
    pub(crate) fn lstm_cell_f64(tier: Tier) {
        let (rows, hidden) = (3, 37);
        let gates: Vec<f32> = (0..rows * 4 * hidden)
            .map(|i| ((i * 7919) % 6000) as f32 / 100.0 - 30.0)
            .collect();
        let c0: Vec<f32> = (0..rows * hidden)
            .map(|i| ((i * 104_729) % 400) as f32 / 100.0 - 2.0)
            .collect();
        let (mut c, mut h) = (c0.clone(), vec![9.0f32; rows * hidden]);
        lstm_cell_on(tier, &gates, &mut c, &mut h, hidden);
        let sig = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
        for r in 0..rows {
            for k in 0..hidden {
                let g = &gates[r * 4 * hidden..];
                let cell = sig(g[hidden + k]) * c0[r * hidden + k] as f64
                    + sig(g[k]) * (g[2 * hidden + k] as f64).tanh();
                let out = sig(g[3 * hidden + k]) * cell.tanh();
                let (gc, gh) = (c[r * hidden + k] as f64, h[r * hidden + k] as f64);
                assert!(
                    (gc - cell).abs() < 1e-6,
                    "{} c[{r}][{k}] {gc} vs {cell}",
                    tier.name()
                );
                assert!(
                    (gh - out).abs() < 1e-6,
                    "{} h[{r}][{k}] {gh} vs {out}",
                    tier.name()
                );
            }
        }
    }

    /// `exp_to_bf16` (harness) gives
    /// `e · (1/Σe)` = the softmax to bf16 precision, leaves the other columns alone, and handles
    /// widths with and without a 16-lane tail.
    pub(crate) fn exp_to_bf16_softmax(tier: Tier) {
        let name = tier.name();
        {
            let kernel = |s: &[f32], st, n, o: &mut [u16], ost, inv: &mut [f32]| {
                exp_to_bf16_on(tier, s, st, n, o, ost, inv)
            };
            for n in [1usize, 16, 37, 1500] {
                let (rows, stride, out_stride) = (3, n + 5, n + 3);
                let scores: Vec<f32> = (0..rows * stride)
                    .map(|i| ((i * 7919) % 1000) as f32 / 40.0 - 12.0)
                    .collect();
                let mut out = vec![0xffffu16; rows * out_stride];
                let mut inv = vec![0f32; rows];
                kernel(&scores, stride, n, &mut out, out_stride, &mut inv);
                for r in 0..rows {
                    let row = &scores[r * stride..][..n];
                    let max = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
                    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                    for (c, &x) in row.iter().enumerate() {
                        let want = (x as f64 - max).exp() / sum;
                        let e = f32::from_bits((out[r * out_stride + c] as u32) << 16) as f64;
                        let got = e * inv[r] as f64;
                        // bf16 rounding: 2^-9 relative, plus the sum's few ulp.
                        assert!(
                            (got - want).abs() <= want * 4e-3 + 1e-30,
                            "{name} n={n} row {r} col {c}: {got} vs {want}"
                        );
                    }
                    assert!(
                        out[r * out_stride + n..(r + 1) * out_stride]
                            .iter()
                            .all(|&v| v == 0xffff),
                        "{name} n={n}: wrote past the row"
                    );
                }
            }
        }
    }

    /// Row softmax against f64 (a masked row included) and the GELU against the portable
    /// version (harness).
    pub(crate) fn softmax_and_gelu(tier: Tier) {
        let n = 37;
        let mut v: Vec<f32> = (0..300 * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        v[n..2 * n].fill(f32::NEG_INFINITY);
        let mut got = v.clone();
        softmax_rows_on(tier, &mut got, n);
        for (r, (row, out)) in v.chunks(n).zip(got.chunks(n)).enumerate() {
            let max = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            for (&x, &y) in row.iter().zip(out) {
                let want = if max == f64::NEG_INFINITY {
                    1.0 / n as f64
                } else {
                    (x as f64 - max).exp() / sum
                };
                assert!(
                    (y as f64 - want).abs() < 1e-6,
                    "{tier:?} softmax row {r}: {y} vs {want}"
                );
            }
        }
        let x: Vec<f32> = (0..70_001).map(|i| i as f32 / 7000.0 - 5.0).collect();
        let (mut a, mut b) = (x.clone(), x);
        gelu_slice_on(tier, &mut a);
        gelu_slice_on(Tier::Portable, &mut b);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{tier:?} gelu max diff {diff}");
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_matches_reference() {
        // erf through the complementary error function in f64 (std has no erf): compare against
        // the Taylor series for |x| ≤ 3 (converges fast there) and 1 beyond.
        fn erf64(x: f64) -> f64 {
            if x.abs() > 4.0 {
                return x.signum();
            }
            let (mut term, mut sum, mut k) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -x * x / k;
                sum += term / (2.0 * k + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut worst = 0f64;
        let mut x = -4.0f32;
        while x < 4.0 {
            worst = worst.max((erf(x) as f64 - erf64(x as f64)).abs());
            x += 0.001;
        }
        assert!(worst < 5e-7, "worst absolute error {worst}");
    }
}
