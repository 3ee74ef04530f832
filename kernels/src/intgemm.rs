//! The encoder's 1500-row projections in 16-bit integers, for `--precision q8` on x86 CPUs
//! without AMX (AVX2: every AMD EPYC before Zen 4, Intel before Sapphire Rapids).
//!
//! There the f32 GEMM is the floor of every request: one tiny.en window is ~37 GFLOP, ~510 ms on
//! two AMD Zen 3 cores, two thirds of it in these projections. `vpmaddwd` multiplies 16 pairs
//! of i16 and adds neighbours into 8 i32 per instruction: twice the multiplies of an 8-lane f32
//! FMA, on the same two pipes.
//!
//! On CPUs with AVX-512 VNNI (the `Avx512Bf16` tier and above: Intel Cooper Lake, Sapphire
//! Rapids, AMD Zen 4) `vpdpwssd` does the multiply, the pair sum and the accumulation in one
//! instruction, and the 32 vector registers hold a larger tile (6 rows × 32 columns): the same
//! packed weights and the same exact integer sums, so the same output bit for bit.
//!
//! Numerics: weights are quantized per output row to 10 bits (±511, one f32 scale per row; int8
//! cost +0.3 WER points on the eval set's long-form file, 10 bits none), held as i16. Each input
//! row is quantized on the fly with its own scale to as many bits as keep every sum over the
//! inner dimension inside i32 (12 bits at tiny's widest, 1536). Sums are exact integers; the
//! result is `sum · scale_row · scale_weight + bias` in f32.

use rayon::prelude::*;

use crate::isa::Tier;

/// i16 per vector: the inner dimension is padded with zeros to a multiple of it.
const LANES: usize = 16;
/// Output columns per packed group: one vector of 8 i32 sums.
const GROUP: usize = 8;
/// Largest weight magnitude (10 bits).
const W_MAX: i32 = 511;
/// Largest activation magnitude (14 bits), where the inner dimension allows it.
const A_MAX: i32 = 8191;
/// The AVX2 register tile: 5 rows × 2 groups (16 columns) is 10 accumulators, plus 2 weight
/// vectors and 1 broadcast, within AVX2's 16 registers (4 × 3 spilled one; 5 × 2 took ~6 %
/// less time in the encoder's projections on Zen 3).
const MR: usize = 5;
const VR: usize = 2;
/// The VNNI register tile: 6 rows × 4 groups (32 columns) is 24 accumulators, plus 4 weight
/// vectors and 1 broadcast, within AVX-512's 32 registers.
const VNNI_MR: usize = 6;
const VNNI_VR: usize = 4;
/// Register tiles of rows per task: a task's rows (50 × 1536 × 2 B = 154 KB at tiny's widest)
/// stay in a core's L2 while every weight panel passes over them.
const TILES_PER_TASK: usize = 10;

/// The register tile (rows, groups of [`GROUP`] columns) of `tier`'s kernel.
fn tile_shape(tier: Tier) -> (usize, usize) {
    if cfg!(target_arch = "x86_64") && tier >= Tier::Avx512Bf16 {
        (VNNI_MR, VNNI_VR)
    } else {
        (MR, VR)
    }
}

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    Tier::best() >= Tier::Avx2
}

/// `y = x·Wᵀ + b` with integer weights and activations (see the module docs).
pub struct IntLinear {
    out: usize,
    inp: usize,
    /// `inp` rounded up to [`LANES`].
    k: usize,
    /// Packed for `vpmaddwd` against a broadcast pair of activations: groups of [`GROUP`] output
    /// columns (the last zero-padded), each `k / 2` vectors of 16 i16 holding, for one pair of
    /// inputs, both weights of each of the group's columns side by side. One multiply-add then
    /// gives 8 columns' partial sums in their own lanes: no horizontal sums, and the epilogue
    /// (scale, bias) works on whole vectors.
    w: Vec<i16>,
    /// Per output column, zero-padded to whole groups (like `bias`).
    w_scale: Vec<f32>,
    bias: Vec<f32>,
    /// Activation range: the largest `a` with `k · a · W_MAX` ≤ i32::MAX, at most [`A_MAX`].
    a_max: i32,
}

impl IntLinear {
    /// `weight` is `(out, inp)` row-major; `bias` has `out` values.
    pub fn from_rows(weight: &[f32], out: usize, inp: usize, mut bias: Vec<f32>) -> Self {
        let k = inp.next_multiple_of(LANES);
        let out_pad = out.next_multiple_of(GROUP);
        let mut w = vec![0i16; out_pad * k];
        let mut w_scale = vec![0f32; out_pad];
        // Each panel of GROUP output rows is its own (model load, in parallel).
        let tier = Tier::best();
        w.par_chunks_mut(GROUP * k)
            .zip(w_scale.par_chunks_mut(GROUP))
            .enumerate()
            .for_each(|(group, (panel, scales))| {
                let mut row = vec![0i16; inp];
                for (lane, scale) in scales.iter_mut().enumerate() {
                    let c = group * GROUP + lane;
                    let Some(src) = weight.get(c * inp..(c + 1) * inp) else {
                        break; // padding rows stay zero
                    };
                    *scale = quantize(tier, src, &mut row, W_MAX);
                    for (i, &q) in row.iter().enumerate() {
                        panel[(i / 2) * 2 * GROUP + lane * 2 + i % 2] = q;
                    }
                }
            });
        bias.resize(out_pad, 0.0);
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

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// `x` `(rows, inp)` row-major → `(rows, out)`, on the best kernels this CPU runs.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.forward_on(Tier::best(), x, rows)
    }

    /// `x` `(rows, inp)` row-major → `(rows, out)`, on the kernels of `tier`.
    pub fn forward_on(&self, tier: Tier, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(
            Tier::available().contains(&tier),
            "{tier:?} kernels need CPU features this one lacks"
        );
        let (n, k) = (self.out, self.k);
        if rows == 0 || n == 0 {
            return vec![0.0; rows * n];
        }
        // Quantized rows (zero past `inp`), each zeroed and written by the task that quantizes it.
        assert_eq!(
            x.len(),
            rows * self.inp,
            "every row quantized, so every chunk initialized"
        );
        let mut a = Vec::with_capacity(rows * k);
        let a_scale: Vec<f32> = a.spare_capacity_mut()[..rows * k]
            .par_chunks_mut(k)
            .zip(x.par_chunks_exact(self.inp))
            .map(|(dst, src)| {
                quantize(
                    tier,
                    src,
                    &mut crate::par::zeroed(dst)[..self.inp],
                    self.a_max,
                )
            })
            .collect();
        // SAFETY: the chunks cover `rows * k` elements and `zeroed` initialized each one.
        unsafe { a.set_len(rows * k) };
        let row_block = tile_shape(tier).0 * TILES_PER_TASK;
        crate::par::par_filled(rows * n, row_block * n, |block, y| {
            let r0 = block * row_block;
            let nrows = y.len() / n;
            self.row_block(tier, &a[r0 * k..][..nrows * k], &a_scale[r0..][..nrows], y);
        })
    }

    /// One task: `nrows` quantized rows → their output rows `y`. Panels outer: one panel of
    /// weights (a register tile's columns) stays in L1 or L2 while all the task's rows pass
    /// over it.
    fn row_block(&self, tier: Tier, a: &[i16], a_scale: &[f32], y: &mut [f32]) {
        let (n, k) = (self.out, self.k);
        let nrows = a_scale.len();
        let (mr_max, vr) = tile_shape(tier);
        for c in (0..n).step_by(vr * GROUP) {
            let cols = (n - c).min(vr * GROUP);
            let groups = cols.div_ceil(GROUP);
            let panel = Panel {
                w: &self.w[c * k..][..groups * GROUP * k],
                w_scale: &self.w_scale[c..][..groups * GROUP],
                bias: &self.bias[c..][..groups * GROUP],
                cols,
            };
            for r in (0..nrows).step_by(mr_max) {
                let mr = (nrows - r).min(mr_max);
                let out = &mut y[r * n + c..][..(mr - 1) * n + cols];
                panel.tile(tier, &a[r * k..][..mr * k], k, &a_scale[r..][..mr], out, n);
            }
        }
    }
}

/// Up to a register tile's packed groups of weight columns, with their scales and biases.
struct Panel<'a> {
    w: &'a [i16],
    w_scale: &'a [f32],
    bias: &'a [f32],
    /// Columns to write (the last group may be padding).
    cols: usize,
}

impl Panel<'_> {
    /// `out[i][j] = (Σₖ a[i][k]·w[j][k]) · (a_scale[i] · w_scale[j]) + bias[j]` for the
    /// `a.len() / k` (≤ the tier's tile) rows of `a` and the panel's columns; `out` rows at
    /// stride `ldo`.
    fn tile(&self, tier: Tier, a: &[i16], k: usize, a_scale: &[f32], out: &mut [f32], ldo: usize) {
        let (mr, groups) = (a.len() / k, self.w.len() / (GROUP * k));
        let (mr_max, vr) = tile_shape(tier);
        assert!(mr <= mr_max && groups <= vr && k.is_multiple_of(LANES) && a_scale.len() == mr);
        assert!(out.len() > (mr - 1) * ldo && out.len() - (mr - 1) * ldo >= self.cols);
        #[cfg(target_arch = "x86_64")]
        if tier >= Tier::Avx2 {
            let args = (
                a.as_ptr(),
                self.w.as_ptr(),
                k,
                a_scale.as_ptr(),
                self.w_scale.as_ptr(),
                self.bias.as_ptr(),
                out.as_mut_ptr(),
                ldo,
                self.cols,
            );
            // One arm per tile shape the row blocks can leave (rows × groups).
            macro_rules! shapes {
                ($kernel:ident: $($r:literal x $g:literal),*) => {
                    match (mr, groups) {
                        // SAFETY: the kernel's features are in `tier` (`isa::detect`: AVX2 from
                        // `Avx2`, AVX-512 F/VL/VNNI from `Avx512Bf16`), which is available (the
                        // caller's contract); the slices hold the rows, groups and columns the
                        // kernel reads and writes (asserted above).
                        $(($r, $g) => return unsafe { x86::$kernel::<$r, $g>(args) },)*
                        _ => {}
                    }
                };
            }
            if tier >= Tier::Avx512Bf16 {
                shapes!(vnni_tile: 6 x 4, 6 x 3, 6 x 2, 6 x 1, 5 x 4, 5 x 3, 5 x 2, 5 x 1,
                    4 x 4, 4 x 3, 4 x 2, 4 x 1, 3 x 4, 3 x 3, 3 x 2, 3 x 1, 2 x 4, 2 x 3, 2 x 2,
                    2 x 1, 1 x 4, 1 x 3, 1 x 2, 1 x 1);
            } else {
                shapes!(avx2_tile: 5 x 2, 5 x 1, 4 x 2, 4 x 1, 3 x 2, 3 x 1, 2 x 2, 2 x 1, 1 x 2,
                    1 x 1);
            }
        }
        let _ = tier;
        for (i, &sa) in a_scale.iter().enumerate() {
            let row = &a[i * k..][..k];
            for j in 0..self.cols {
                let panel = &self.w[(j / GROUP) * GROUP * k..][..GROUP * k];
                let lane = j % GROUP;
                let sum: i32 = row
                    .chunks_exact(2)
                    .zip(panel.chunks_exact(2 * GROUP))
                    .map(|(x, w)| {
                        x[0] as i32 * w[2 * lane] as i32 + x[1] as i32 * w[2 * lane + 1] as i32
                    })
                    .sum();
                // The same operations, in the same order, as the vector epilogue.
                out[i * ldo + j] = sum as f32 * (sa * self.w_scale[j]) + self.bias[j];
            }
        }
    }
}

/// Symmetric quantization of `src` to `±max` into `dst`; returns the scale (value per step).
/// Every tier gives the same values (only the speed of the rounding differs).
pub(crate) fn quantize(tier: Tier, src: &[f32], dst: &mut [i16], max: i32) -> f32 {
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
        if tier >= Tier::Avx2 {
            // SAFETY: `tier` is available (the caller's contract), so the CPU has AVX2.
            return unsafe { quantize_avx2(src, dst, max) };
        }
    }
    let _ = tier;
    body(src, dst, max)
}

/// [`quantize`]'s `body` in 8-lane vectors, value for value the same: LLVM left both of its
/// loops scalar (the NaN-ignoring maximum does not reassociate; the saturating `as i16` went
/// lane by lane), 3 % of a q8 run's time on the encoder's activations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(src: &[f32], dst: &mut [i16], max: i32) -> f32 {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let sign = _mm256_set1_ps(-0.0);
    // `f32::max` ignores a NaN operand: `vmaxps` returns its second operand when either is
    // NaN, so the running maximum goes second.
    let mut m = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(s.add(i))), m);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let mut amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
    for &v in &src[i..n] {
        amax = amax.max(v.abs());
    }
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(0);
        return 0.0;
    }
    let (inv, lim) = (max as f32 / amax, max as f32);
    let (vinv, vlo, vhi) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(-lim),
        _mm256_set1_ps(lim),
    );
    let mut i = 0;
    while i + 8 <= n {
        let t = _mm256_mul_ps(_mm256_loadu_ps(s.add(i)), vinv);
        // NaN (a NaN input, or 0 × ∞ when `amax` is subnormal) becomes 0, as `as i16` makes it.
        let t = _mm256_and_ps(t, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let r = _mm256_min_ps(_mm256_max_ps(r, vlo), vhi);
        let q = _mm256_cvtps_epi32(r);
        let packed = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        _mm_storeu_si128(d.add(i) as *mut __m128i, packed);
        i += 8;
    }
    for (o, &v) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *o = (v * inv).round_ties_even().clamp(-lim, lim) as i16;
    }
    amax / lim
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// a, w, k, a_scale, w_scale, bias, out, ldo, cols (see [`super::Panel::tile`]).
    pub(super) type TileArgs = (
        *const i16,
        *const i16,
        usize,
        *const f32,
        *const f32,
        *const f32,
        *mut f32,
        usize,
        usize,
    );

    /// One register tile's kernel for the CPU features `$feat`; `$step` adds the pair products
    /// of the broadcast activations `$a` and weights `$w` into the accumulator `$acc`.
    macro_rules! tile_fn {
        ($name:ident, $feat:literal, |$acc:ident, $a:ident, $w:ident| $step:expr) => {
            /// Per pair of inputs: `G` weight vectors (8 columns × 2 inputs each), and for each
            /// of the `R` rows its two activations broadcast as one i32, multiplied and
            /// pair-summed into that row's 8-column accumulators; then scale and bias.
            ///
            /// # Safety
            /// The CPU has the features enabled here; `a` points to `R` rows of `k` (a multiple
            /// of 16) i16, `w` to `G` packed groups, `w_scale` and `bias` to `8·G` values, `out`
            /// to `R` rows (stride `ldo`) with room for `cols` ≤ `8·G` values each.
            #[target_feature(enable = $feat)]
            #[allow(clippy::needless_range_loop)]
            pub(super) unsafe fn $name<const R: usize, const G: usize>(args: TileArgs) {
                let (a, w, k, a_scale, w_scale, bias, out, ldo, cols) = args;
                let mut acc: [[__m256i; G]; R] = std::mem::zeroed();
                let mut wv: [__m256i; G] = std::mem::zeroed();
                let group = k * super::GROUP;
                for p in 0..k / 2 {
                    for g in 0..G {
                        wv[g] = _mm256_loadu_si256(w.add(g * group + p * 16) as *const __m256i);
                    }
                    for r in 0..R {
                        let pair = (a.add(r * k + 2 * p) as *const i32).read_unaligned();
                        let av = _mm256_set1_epi32(pair);
                        for g in 0..G {
                            let ($acc, $a, $w) = (acc[r][g], av, wv[g]);
                            acc[r][g] = $step;
                        }
                    }
                }
                for r in 0..R {
                    let sa = _mm256_set1_ps(*a_scale.add(r));
                    for g in 0..G {
                        let scale = _mm256_mul_ps(sa, _mm256_loadu_ps(w_scale.add(8 * g)));
                        let y = _mm256_add_ps(
                            _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][g]), scale),
                            _mm256_loadu_ps(bias.add(8 * g)),
                        );
                        let dst = out.add(r * ldo + 8 * g);
                        if cols >= 8 * (g + 1) {
                            _mm256_storeu_ps(dst, y);
                        } else if cols > 8 * g {
                            let mut tmp = [0f32; 8];
                            _mm256_storeu_ps(tmp.as_mut_ptr(), y);
                            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols - 8 * g);
                        }
                    }
                }
            }
        };
    }

    // `vpmaddwd` then `vpaddd`: 16 registers hold a 5 × 2 tile.
    tile_fn!(avx2_tile, "avx2", |acc, a, w| _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(a, w)
    ));
    // `vpdpwssd` (the same sums, wrapping like `vpaddd`; no pair can reach 2·(-32768)²): one
    // instruction, and 32 registers hold a 6 × 4 tile.
    tile_fn!(
        vnni_tile,
        "avx2,avx512f,avx512vl,avx512vnni",
        |acc, a, w| _mm256_dpwssd_epi32(acc, a, w)
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_values as values;

    /// Every tier gives the exact integer sums of the quantized operands (so the same result),
    /// and that result is within the quantization error of the f32 product, for shapes with
    /// partial tiles, partial blocks and an inner dimension that is not a multiple of 16.
    /// (harness)
    pub(crate) fn int_linear(tier: Tier) {
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
            let portable = l.forward_on(Tier::Portable, &x, rows);
            {
                let got = l.forward_on(tier, &x, rows);
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
    /// The vector quantization gives the portable one's values and scale exactly, ties, NaN,
    /// infinity, a subnormal maximum and partial vectors included.
    #[test]
    fn vector_quantize_equals_portable() {
        if !Tier::available().contains(&Tier::Avx2) {
            return;
        }
        let mut cases = vec![
            values(1003, 7),
            (0..41).map(|i| i as f32 * 0.5 - 10.0).collect::<Vec<_>>(),
            vec![1e-45, -1e-45, 0.0, 1e-45, 0.0, 0.0, 0.0, 0.0, 1e-45, 3e-45],
            vec![0.0; 19],
        ];
        let mut nan = values(37, 3);
        nan[5] = f32::NAN;
        nan[33] = f32::NAN;
        cases.push(nan);
        let mut inf = values(37, 3);
        inf[9] = f32::NEG_INFINITY;
        cases.push(inf);
        for src in &cases {
            for max in [511, 8191, 32767] {
                let (mut a, mut b) = (vec![7i16; src.len()], vec![7i16; src.len()]);
                let sa = quantize(Tier::Portable, src, &mut a, max);
                let sb = quantize(Tier::Avx2, src, &mut b, max);
                assert_eq!(sa.to_bits(), sb.to_bits(), "scale, max {max}: {src:?}");
                assert_eq!(a, b, "values, max {max}: {src:?}");
            }
        }
    }

    #[test]
    fn activation_range_keeps_sums_in_i32() {
        for inp in [16, 384, 1536, 2048, 5120, 20480] {
            let l = IntLinear::from_rows(&vec![0.5; inp], 1, inp, vec![0.0]);
            assert!(l.a_max >= 1 && l.a_max <= A_MAX);
            assert!((l.k as i64) * (l.a_max as i64) * (W_MAX as i64) <= i32::MAX as i64);
            // The worst case: every product at its largest.
            let x = vec![1.0f32; inp];
            let y = l.forward_on(Tier::best(), &x, 1);
            assert!(
                (y[0] - 0.5 * inp as f32).abs() < 1e-3 * inp as f32,
                "{inp}: {}",
                y[0]
            );
        }
    }
}
