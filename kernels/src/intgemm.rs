//! The encoder's 1500-row projections in integers, for `--precision q8` on x86 CPUs without AMX
//! (AVX2: every AMD EPYC before Zen 4, Intel before Sapphire Rapids; AVX-512 VNNI: Zen 4,
//! Cooper Lake). Two formats, chosen per CPU at load ([`WeightBits::for_tier`]):
//!
//! - **Ten bits (AVX2).** There the f32 GEMM is the floor of every request: one tiny.en window
//!   is ~37 GFLOP, ~510 ms on two AMD Zen 3 cores, two thirds of it in these projections.
//!   `vpmaddwd` multiplies 16 pairs of i16 and adds neighbours into 8 i32 per instruction: twice
//!   the multiplies of an 8-lane f32 FMA, on the same two pipes. Weights are quantized per
//!   output column to 10 bits (±511, one f32 scale each), held as i16; each input row is
//!   quantized on the fly with its own scale to as many bits as keep every sum over the inner
//!   dimension inside i32 (12 bits at tiny's widest, 1536).
//! - **Eight bits (AVX-512 VNNI).** `vpdpbusd` multiplies four pairs of bytes per 32-bit lane and
//!   accumulates, where `vpdpwssd` on i16 does two: the same instruction rate, twice the
//!   products (365 against 150 GMAC/s for a 1500 × 512 × 2048 projection on two Zen 4 cores).
//!   Weights are 8-bit per output column (±127); activations are 8-bit per row with a zero
//!   point (0..=255 over the row's range, 0 included: GELU's one-sided output keeps all 256
//!   steps, where symmetric bytes would give it 128 — with symmetric bytes tiny.en's eval WER
//!   rose 5.09 → 6.04 %, with a zero point it is 5.17 %, f32 5.25 %). The zero point comes off
//!   the integer sum exactly, as `zero · Σ weights` per column.
//!
//! Sums are exact integers in both; the result is `sum · scale_row · scale_weight + bias` in f32.
//! Every tier computes either format (the portable loops, for tests); a format's vector kernel
//! gives the portable result bit for bit.

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
/// Largest weight magnitude of the 8-bit format (sums stay in i32: 255 · 127 · k for any k
/// below 66,000).
const W8_MAX: i32 = 127;
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
    w: Packed,
    /// Per output column, zero-padded to whole groups (like `bias`).
    w_scale: Vec<f32>,
    bias: Vec<f32>,
}

/// The weights in one of the two integer formats, packed for their kernel.
enum Packed {
    /// 10-bit weights as i16 for `vpmaddwd`/`vpdpwssd`: groups of [`GROUP`] output columns (the
    /// last zero-padded), each `k / 2` vectors of 16 i16 holding, for one pair of inputs, both
    /// weights of each of the group's columns side by side. One multiply-add then gives 8
    /// columns' partial sums in their own lanes: no horizontal sums, and the epilogue (scale,
    /// bias) works on whole vectors.
    I16 {
        w: Vec<i16>,
        /// Activation range: the largest `a` with `k · a · W_MAX` ≤ i32::MAX, at most [`A_MAX`].
        a_max: i32,
    },
    /// 8-bit weights for `vpdpbusd`: the same groups, each `k / 4` vectors of 32 i8 holding, for
    /// four inputs, the four weights of each column side by side.
    I8 {
        w: Vec<i8>,
        /// Per output column, the sum of its quantized weights (for the activations' zero
        /// point), zero-padded to whole groups.
        colsum: Vec<i32>,
    },
}

/// How an [`IntLinear`] stores its weights; [`WeightBits::for_tier`] picks per CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightBits {
    /// 10-bit weights, activations to 12–14 bits (signed): the AVX2 kernel.
    Ten,
    /// 8-bit weights, activations to 8 bits with a zero point (asymmetric, 0..=255): AVX-512
    /// VNNI's `vpdpbusd` multiplies four byte pairs per lane, twice `vpdpwssd`'s two.
    Eight,
}

impl WeightBits {
    /// Eight on CPUs with AVX-512 VNNI, ten elsewhere.
    pub fn for_tier(tier: Tier) -> Self {
        if cfg!(target_arch = "x86_64") && tier >= Tier::Avx512Bf16 {
            WeightBits::Eight
        } else {
            WeightBits::Ten
        }
    }
}

impl IntLinear {
    /// `weight` is `(out, inp)` row-major; `bias` has `out` values. The format is the best
    /// this CPU's kernels run ([`WeightBits::for_tier`]).
    pub fn from_rows(weight: &[f32], out: usize, inp: usize, bias: Vec<f32>) -> Self {
        Self::from_rows_as(WeightBits::for_tier(Tier::best()), weight, out, inp, bias)
    }

    /// [`Self::from_rows`] in the format `bits` (any format runs on every tier; only the
    /// tier's own format runs on its vector kernel).
    pub fn from_rows_as(
        bits: WeightBits,
        weight: &[f32],
        out: usize,
        inp: usize,
        mut bias: Vec<f32>,
    ) -> Self {
        let k = inp.next_multiple_of(LANES);
        let out_pad = out.next_multiple_of(GROUP);
        let mut w_scale = vec![0f32; out_pad];
        let tier = Tier::best();
        let w_max = match bits {
            WeightBits::Ten => W_MAX,
            WeightBits::Eight => W8_MAX,
        };
        // Each output column quantized to `w_max` (model load, in parallel, a group per task).
        let mut q = vec![0i16; out_pad * k];
        q.par_chunks_mut(GROUP * k)
            .zip(w_scale.par_chunks_mut(GROUP))
            .enumerate()
            .for_each(|(group, (rows, scales))| {
                for (lane, scale) in scales.iter_mut().enumerate() {
                    let c = group * GROUP + lane;
                    let Some(src) = weight.get(c * inp..(c + 1) * inp) else {
                        break; // padding rows stay zero
                    };
                    *scale = quantize(tier, src, &mut rows[lane * k..][..inp], w_max);
                }
            });
        // `q` holds each group's columns one after another; the kernels want the inputs of a
        // pair (ten bits) or a quad (eight) of each column side by side.
        let w = match bits {
            WeightBits::Ten => {
                let mut w = vec![0i16; out_pad * k];
                w.par_chunks_mut(GROUP * k)
                    .zip(q.par_chunks(GROUP * k))
                    .for_each(|(panel, rows)| {
                        for (lane, row) in rows.chunks(k).enumerate() {
                            for (i, &v) in row.iter().enumerate() {
                                panel[(i / 2) * 2 * GROUP + lane * 2 + i % 2] = v;
                            }
                        }
                    });
                let a_max = (i32::MAX as i64 / (k as i64 * W_MAX as i64)).min(A_MAX as i64) as i32;
                Packed::I16 { w, a_max }
            }
            WeightBits::Eight => {
                let mut w = vec![0i8; out_pad * k];
                w.par_chunks_mut(GROUP * k)
                    .zip(q.par_chunks(GROUP * k))
                    .for_each(|(panel, rows)| {
                        for (lane, row) in rows.chunks(k).enumerate() {
                            for (i, &v) in row.iter().enumerate() {
                                // |v| ≤ W8_MAX = 127.
                                panel[(i / 4) * 4 * GROUP + lane * 4 + i % 4] = v as i8;
                            }
                        }
                    });
                let colsum = q
                    .par_chunks(k)
                    .map(|row| row.iter().map(|&v| v as i32).sum())
                    .collect();
                Packed::I8 { w, colsum }
            }
        };
        bias.resize(out_pad, 0.0);
        Self {
            out,
            inp,
            k,
            w,
            w_scale,
            bias,
        }
    }

    /// The weights' format.
    pub fn bits(&self) -> WeightBits {
        match self.w {
            Packed::I16 { .. } => WeightBits::Ten,
            Packed::I8 { .. } => WeightBits::Eight,
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
        assert_eq!(x.len(), rows * self.inp, "rows of `inp` inputs");
        let row_block = tile_shape(tier).0 * TILES_PER_TASK;
        let inp = self.inp;
        match &self.w {
            Packed::I16 { w, a_max } => {
                let (a, a_scale) =
                    quantize_rows(x, inp, k, |src, dst| quantize(tier, src, dst, *a_max));
                crate::par::par_filled(rows * n, row_block * n, |block, y| {
                    let r0 = block * row_block;
                    self.row_block(tier, r0, y, |r, c, mr, cols, out| {
                        let groups = cols.div_ceil(GROUP);
                        let panel = Panel {
                            w: &w[c * k..][..groups * GROUP * k],
                            w_scale: &self.w_scale[c..][..groups * GROUP],
                            bias: &self.bias[c..][..groups * GROUP],
                            cols,
                        };
                        panel.tile(tier, &a[r * k..][..mr * k], k, &a_scale[r..][..mr], out, n);
                    });
                })
            }
            Packed::I8 { w, colsum } => {
                let (a, scale_zero) =
                    quantize_rows(x, inp, k, |src, dst| quantize_u8(tier, src, dst));
                let (a_scale, a_zero): (Vec<f32>, Vec<i32>) = scale_zero.into_iter().unzip();
                crate::par::par_filled(rows * n, row_block * n, |block, y| {
                    let r0 = block * row_block;
                    self.row_block(tier, r0, y, |r, c, mr, cols, out| {
                        let groups = cols.div_ceil(GROUP);
                        let panel = Panel8 {
                            w: &w[c * k..][..groups * GROUP * k],
                            colsum: &colsum[c..][..groups * GROUP],
                            w_scale: &self.w_scale[c..][..groups * GROUP],
                            bias: &self.bias[c..][..groups * GROUP],
                            cols,
                        };
                        let rows = Rows8 {
                            a: &a[r * k..][..mr * k],
                            scale: &a_scale[r..][..mr],
                            zero: &a_zero[r..][..mr],
                        };
                        panel.tile(tier, &rows, k, out, n);
                    });
                })
            }
        }
    }

    /// One task: the output rows `y` (from row `r0`), a register tile at a time. Panels outer:
    /// one panel of weights (a register tile's columns) stays in L1 or L2 while all the task's
    /// rows pass over it. `tile(r, c, mr, cols, out)` computes rows `r..r + mr` (of the whole
    /// input) and columns `c..c + cols` into `out` (row stride `out_features`).
    fn row_block(
        &self,
        tier: Tier,
        r0: usize,
        y: &mut [f32],
        tile: impl Fn(usize, usize, usize, usize, &mut [f32]),
    ) {
        let n = self.out;
        let nrows = y.len() / n;
        let (mr_max, vr) = tile_shape(tier);
        for c in (0..n).step_by(vr * GROUP) {
            let cols = (n - c).min(vr * GROUP);
            for r in (0..nrows).step_by(mr_max) {
                let mr = (nrows - r).min(mr_max);
                tile(
                    r0 + r,
                    c,
                    mr,
                    cols,
                    &mut y[r * n + c..][..(mr - 1) * n + cols],
                );
            }
        }
    }
}

/// Each row of `x` (`inp` values) quantized by `f` into `k` elements (zero past `inp`), in
/// parallel; with what `f` returned per row (its scale, and zero point).
fn quantize_rows<T, R, F>(x: &[f32], inp: usize, k: usize, f: F) -> (Vec<T>, Vec<R>)
where
    T: Copy + Default + Send,
    R: Send,
    F: Fn(&[f32], &mut [T]) -> R + Sync,
{
    let rows = x.len() / inp.max(1);
    let mut a = Vec::with_capacity(rows * k);
    let per_row: Vec<R> = a.spare_capacity_mut()[..rows * k]
        .par_chunks_mut(k)
        .zip(x.par_chunks_exact(inp.max(1)))
        .map(|(dst, src)| f(src, &mut crate::par::zeroed(dst)[..inp]))
        .collect();
    assert_eq!(
        per_row.len(),
        rows,
        "every row quantized, so every chunk initialized"
    );
    // SAFETY: the `rows` chunks cover `rows * k` elements and `zeroed` initialized each one.
    unsafe { a.set_len(rows * k) };
    (a, per_row)
}

/// A register tile's rows of 8-bit activations (`k` bytes each) with their scales and zero
/// points.
struct Rows8<'a> {
    a: &'a [u8],
    scale: &'a [f32],
    zero: &'a [i32],
}

/// [`Panel`] for the 8-bit format.
struct Panel8<'a> {
    w: &'a [i8],
    colsum: &'a [i32],
    w_scale: &'a [f32],
    bias: &'a [f32],
    /// Columns to write (the last group may be padding).
    cols: usize,
}

impl Panel8<'_> {
    /// `out[i][j] = (Σₖ a[i][k]·w[j][k] − zero[i]·colsum[j]) · (scale[i] · w_scale[j]) +
    /// bias[j]`: the activations are `scale · (a − zero)`.
    fn tile(&self, tier: Tier, rows: &Rows8, k: usize, out: &mut [f32], ldo: usize) {
        let (mr, groups) = (rows.scale.len(), self.w.len() / (GROUP * k));
        let (mr_max, vr) = tile_shape(tier);
        assert!(mr <= mr_max && groups <= vr && k.is_multiple_of(LANES));
        assert!(rows.a.len() == mr * k && rows.zero.len() == mr);
        assert!(
            self.colsum.len() == groups * GROUP
                && self.w_scale.len() == groups * GROUP
                && self.bias.len() == groups * GROUP
        );
        assert!(out.len() > (mr - 1) * ldo && out.len() - (mr - 1) * ldo >= self.cols);
        #[cfg(target_arch = "x86_64")]
        if tier >= Tier::Avx512Bf16 {
            let args = (
                rows.a.as_ptr(),
                self.w.as_ptr(),
                k,
                rows.scale.as_ptr(),
                rows.zero.as_ptr(),
                self.colsum.as_ptr(),
                self.w_scale.as_ptr(),
                self.bias.as_ptr(),
                out.as_mut_ptr(),
                ldo,
                self.cols,
            );
            macro_rules! shapes {
                ($($r:literal x $g:literal),*) => {
                    match (mr, groups) {
                        // SAFETY: AVX-512 F/VL/VNNI are in `tier` (`isa::detect`), which is
                        // available (the caller's contract); the slices hold the rows, groups
                        // and columns the kernel reads and writes (asserted above).
                        $(($r, $g) => return unsafe { x86::vnni8_tile::<$r, $g>(args) },)*
                        _ => {}
                    }
                };
            }
            shapes!(6 x 4, 6 x 3, 6 x 2, 6 x 1, 5 x 4, 5 x 3, 5 x 2, 5 x 1, 4 x 4, 4 x 3, 4 x 2,
                4 x 1, 3 x 4, 3 x 3, 3 x 2, 3 x 1, 2 x 4, 2 x 3, 2 x 2, 2 x 1, 1 x 4, 1 x 3, 1 x 2,
                1 x 1);
        }
        let _ = tier;
        for i in 0..mr {
            let row = &rows.a[i * k..][..k];
            for j in 0..self.cols {
                let panel = &self.w[(j / GROUP) * GROUP * k..][..GROUP * k];
                let lane = j % GROUP;
                let sum: i32 = row
                    .chunks_exact(4)
                    .zip(panel.chunks_exact(4 * GROUP))
                    .map(|(x, w)| {
                        (0..4)
                            .map(|b| x[b] as i32 * w[4 * lane + b] as i32)
                            .sum::<i32>()
                    })
                    .sum();
                let sum = sum - rows.zero[i] * self.colsum[j];
                // The same operations, in the same order, as the vector epilogue.
                out[i * ldo + j] = sum as f32 * (rows.scale[i] * self.w_scale[j]) + self.bias[j];
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
        assert!(self.w_scale.len() == groups * GROUP && self.bias.len() == groups * GROUP);
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

/// Asymmetric quantization of `src` to bytes: `value ≈ scale · (q − zero)` with `q` in
/// 0..=255 over the row's range (zero included, so `zero` is a byte too and a one-sided row —
/// GELU's output — uses all 256 steps, where a symmetric byte would give it 128). NaN becomes
/// `zero` (the value 0). Every tier gives the same bytes, scale and zero point.
pub(crate) fn quantize_u8(tier: Tier, src: &[f32], dst: &mut [u8]) -> (f32, i32) {
    let (mut lo, mut hi) = (0f32, 0f32);
    #[cfg(target_arch = "x86_64")]
    let done = if tier >= Tier::Avx2 {
        // SAFETY: `tier` is available (the caller's contract), so the CPU has AVX2.
        let (l, h, n) = unsafe { x86::range_avx2(src) };
        (lo, hi) = (l, h);
        n
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for &v in &src[done..] {
        (lo, hi) = (lo.min(v), hi.max(v));
    }
    let range = hi - lo;
    let inv = 255.0 / range;
    // A zero range (an all-zero row) makes `inv` infinite.
    if !range.is_finite() || !inv.is_finite() {
        dst.fill(0);
        return (0.0, 0);
    }
    // In 0..=255: `lo ≤ 0 ≤ hi`.
    let zero = (-lo * inv).round_ties_even();
    #[cfg(target_arch = "x86_64")]
    let done = if tier >= Tier::Avx2 {
        // SAFETY: as above.
        unsafe { x86::to_u8_avx2(src, dst, inv, zero) }
    } else {
        0
    };
    for (d, &v) in dst[done..].iter_mut().zip(&src[done..]) {
        let t = v * inv;
        *d = if t.is_nan() {
            zero as u8
        } else {
            (t.round_ties_even() + zero).clamp(0.0, 255.0) as u8
        };
    }
    (range / 255.0, zero as i32)
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
                        store_group(out.add(r * ldo + 8 * g), y, cols, g);
                    }
                }
            }
        };
    }

    /// The smallest and largest of `src` and 0 (NaN ignored, as `f32::min`/`max` do), over the
    /// whole vectors of 8; returns them and how many values that covered.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn range_avx2(src: &[f32]) -> (f32, f32, usize) {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 8 <= src.len() {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            // `vminps`/`vmaxps` return the second operand when either is NaN.
            lo = _mm256_min_ps(v, lo);
            hi = _mm256_max_ps(v, hi);
            i += 8;
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        (
            l.iter().fold(0f32, |a, &v| a.min(v)),
            h.iter().fold(0f32, |a, &v| a.max(v)),
            i,
        )
    }

    /// [`super::quantize_u8`]'s rounding over the whole vectors of 8, value for value; returns
    /// how many values it wrote.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_u8_avx2(src: &[f32], dst: &mut [u8], inv: f32, zero: f32) -> usize {
        let n = src.len().min(dst.len());
        let (vinv, vz, v0, v255) = (
            _mm256_set1_ps(inv),
            _mm256_set1_ps(zero),
            _mm256_setzero_ps(),
            _mm256_set1_ps(255.0),
        );
        let mut i = 0;
        while i + 8 <= n {
            let t = _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(i)), vinv);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, vz), v0), v255);
            // NaN lanes take the zero point.
            let q = _mm256_blendv_ps(vz, q, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
            let q = _mm256_cvtps_epi32(q);
            let w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            let b = _mm_packus_epi16(w, w);
            _mm_storel_epi64(dst.as_mut_ptr().add(i) as *mut __m128i, b);
            i += 8;
        }
        i
    }

    /// Group `g`'s 8 outputs `y` to `dst`, or as many of them as fall within `cols`.
    ///
    /// # Safety
    /// The CPU has AVX; `dst` has room for `min(8, cols − 8·g)` values.
    #[inline(always)]
    unsafe fn store_group(dst: *mut f32, y: __m256, cols: usize, g: usize) {
        if cols >= 8 * (g + 1) {
            _mm256_storeu_ps(dst, y);
        } else if cols > 8 * g {
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), y);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols - 8 * g);
        }
    }

    /// a (bytes), w, k, a_scale, a_zero, colsum, w_scale, bias, out, ldo, cols (see
    /// [`super::Panel8::tile`]).
    pub(super) type Tile8Args = (
        *const u8,
        *const i8,
        usize,
        *const f32,
        *const i32,
        *const i32,
        *const f32,
        *const f32,
        *mut f32,
        usize,
        usize,
    );

    /// Per quad of inputs: `G` weight vectors (8 columns × 4 inputs each), and for each of the
    /// `R` rows its four activation bytes broadcast as one i32, multiplied (unsigned × signed),
    /// summed in fours and accumulated by `vpdpbusd`; then the zero point's correction, scale
    /// and bias.
    ///
    /// # Safety
    /// The CPU has AVX2 and AVX-512 F/VL/VNNI; `a` points to `R` rows of `k` (a multiple of 16)
    /// bytes, `w` to `G` packed groups, `colsum`, `w_scale` and `bias` to `8·G` values,
    /// `a_scale` and `a_zero` to `R`, `out` to `R` rows (stride `ldo`) with room for `cols` ≤
    /// `8·G` values each.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn vnni8_tile<const R: usize, const G: usize>(args: Tile8Args) {
        let (a, w, k, a_scale, a_zero, colsum, w_scale, bias, out, ldo, cols) = args;
        let mut acc: [[__m256i; G]; R] = std::mem::zeroed();
        let mut wv: [__m256i; G] = std::mem::zeroed();
        let group = k * super::GROUP;
        for q in 0..k / 4 {
            for g in 0..G {
                wv[g] = _mm256_loadu_si256(w.add(g * group + q * 32) as *const __m256i);
            }
            for r in 0..R {
                let quad = (a.add(r * k + 4 * q) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(quad);
                for g in 0..G {
                    acc[r][g] = _mm256_dpbusd_epi32(acc[r][g], av, wv[g]);
                }
            }
        }
        for r in 0..R {
            let sa = _mm256_set1_ps(*a_scale.add(r));
            let z = _mm256_set1_epi32(*a_zero.add(r));
            for g in 0..G {
                let cs = _mm256_loadu_si256(colsum.add(8 * g) as *const __m256i);
                let sum = _mm256_sub_epi32(acc[r][g], _mm256_mullo_epi32(z, cs));
                let scale = _mm256_mul_ps(sa, _mm256_loadu_ps(w_scale.add(8 * g)));
                let y = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(sum), scale),
                    _mm256_loadu_ps(bias.add(8 * g)),
                );
                store_group(out.add(r * ldo + 8 * g), y, cols, g);
            }
        }
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
        for bits in [WeightBits::Ten, WeightBits::Eight] {
            for (rows, out, inp) in [(1, 1, 16), (7, 5, 40), (50, 100, 384), (97, 49, 240)] {
                let w = values(out * inp, 1);
                let b = values(out, 2);
                let x = values(rows * inp, 4);
                let l = IntLinear::from_rows_as(bits, &w, out, inp, b.clone());
                assert_eq!(l.bits(), bits);
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
                    assert_eq!(
                        got, portable,
                        "{tier:?} {bits:?} differs from the portable sums"
                    );
                }
                // Half a step per weight (amax / 2·max, amax ≤ 0.5) times |x| ≤ 0.5, and for
                // bytes half an activation step (range / 2·255, range ≤ 1) times |w| ≤ 0.5, over
                // inp terms of random sign: ~6 standard deviations.
                let per_term = match bits {
                    WeightBits::Ten => 0.5 / W_MAX as f64 * 0.5,
                    WeightBits::Eight => 0.5 / W8_MAX as f64 * 0.5 + 0.5 / 255.0 * 0.5,
                };
                let bound = per_term * (inp as f64).sqrt() * 2.0;
                for (i, (g, w)) in portable.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() < bound,
                        "{bits:?} rows {rows} out {out} inp {inp}: [{i}] {g} vs {w} (bound {bound})"
                    );
                }
            }
        }
    }

    /// Bytes: the vector rounding gives the portable values, scale and zero point exactly (ties,
    /// NaN, one-sided rows, partial vectors, an all-zero row); a one-sided row spans all 256
    /// steps, and every value comes back within half a step.
    #[test]
    fn byte_quantization() {
        let mut cases = vec![
            values(1003, 7),
            (0..41).map(|i| i as f32 * 0.5 - 10.0).collect::<Vec<_>>(),
            (0..37).map(|i| i as f32 * 0.25).collect::<Vec<_>>(),
            (0..29)
                .map(|i| -(i as f32) * 0.125 - 1.0)
                .collect::<Vec<_>>(),
            vec![0.0; 19],
            vec![1e-45, -1e-45, 0.0, 3e-45],
        ];
        let mut nan = values(37, 3);
        nan[5] = f32::NAN;
        nan[33] = f32::NAN;
        cases.push(nan);
        for src in &cases {
            let (mut a, mut b) = (vec![7u8; src.len()], vec![7u8; src.len()]);
            let pa = quantize_u8(Tier::Portable, src, &mut a);
            if Tier::available().contains(&Tier::Avx2) {
                let pb = quantize_u8(Tier::Avx2, src, &mut b);
                assert_eq!((pa.0.to_bits(), pa.1), (pb.0.to_bits(), pb.1), "{src:?}");
                assert_eq!(a, b, "{src:?}");
            }
            let (scale, zero) = pa;
            assert!((0..=255).contains(&zero));
            for (&q, &v) in a.iter().zip(src) {
                let back = scale * (q as i32 - zero) as f32;
                let want = if v.is_nan() { 0.0 } else { v };
                assert!(
                    (back - want).abs() <= scale * 0.5 + 1e-6,
                    "{v} → {q} → {back}"
                );
            }
        }
        let mut one_sided = vec![0u8; 37];
        let (_, zero) = quantize_u8(Tier::best(), &cases[2], &mut one_sided);
        assert_eq!((zero, one_sided[0], one_sided[36]), (0, 0, 255));
        let inf = [1.0, f32::INFINITY, -2.0];
        let mut q = [9u8; 3];
        assert_eq!(quantize_u8(Tier::best(), &inf, &mut q), (0.0, 0));
        assert_eq!(q, [0; 3]);
    }

    /// This CPU's format: bytes where AVX-512 VNNI runs `vpdpbusd`.
    #[test]
    fn format_follows_the_tier() {
        assert_eq!(WeightBits::for_tier(Tier::Avx2), WeightBits::Ten);
        let want = if cfg!(target_arch = "x86_64") {
            WeightBits::Eight
        } else {
            WeightBits::Ten
        };
        assert_eq!(WeightBits::for_tier(Tier::Avx512Bf16), want);
        let l = IntLinear::from_rows(&values(32, 1), 2, 16, vec![0.0; 2]);
        assert_eq!(l.bits(), WeightBits::for_tier(Tier::best()));
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

    /// Bytes: the widest inner dimension a Whisper-sized model could reach, with one-sided rows
    /// at both ends of the zero point (0 and 255) and the largest weights: sums and the
    /// zero-point correction stay exact in i32 on every tier.
    #[test]
    fn byte_sums_stay_in_i32() {
        let inp = 20480;
        let l = IntLinear::from_rows_as(WeightBits::Eight, &vec![-0.5; inp], 1, inp, vec![0.0]);
        for x in [1.0f32, -1.0] {
            for &tier in Tier::available() {
                let y = l.forward_on(tier, &vec![x; inp], 1);
                let want = -0.5 * x * inp as f32;
                assert!(
                    (y[0] - want).abs() < 1e-3 * inp as f32,
                    "{tier:?} {x}: {}",
                    y[0]
                );
            }
        }
    }

    #[test]
    fn activation_range_keeps_sums_in_i32() {
        for inp in [16, 384, 1536, 2048, 5120, 20480] {
            let l = IntLinear::from_rows_as(WeightBits::Ten, &vec![0.5; inp], 1, inp, vec![0.0]);
            let Packed::I16 { a_max, .. } = l.w else {
                panic!("ten bits are i16")
            };
            assert!((1..=A_MAX).contains(&a_max));
            assert!((l.k as i64) * (a_max as i64) * (W_MAX as i64) <= i32::MAX as i64);
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
