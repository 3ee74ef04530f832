//! `y = x·Wᵀ + b` for the decoder's few-row inputs (one row per decoding sequence per step).
//!
//! With 1–8 rows a decoder step is bound by reading the weights from memory, not by arithmetic:
//! tiny.en reads ~113 MB of f32 weights per step (33 MB of layers, 80 MB of the tied output
//! projection). The weights shipped in the models are fp16, so they are kept here as fp16
//! (converted to f32 in registers, `vcvtph2ps`) when every value converts back exactly; the
//! products and sums are then the same f32 arithmetic as before at half the memory traffic. A
//! weight that is not exactly fp16 (an fp32 checkpoint) stays f32. Every weight is read once per
//! call whatever the number of rows (blocks of 4 rows reuse each group of weights from L1), which is what
//! makes batched decoder steps cheap.
//!
//! The kernels are AVX-512 and AVX2 (checked at run time; q8 on AVX2 multiplies in integers,
//! `q8_pairs`) with a portable fallback; output columns are split across the rayon pool.

use rayon::prelude::*;

use crate::isa::Tier;

/// Below this many weights one thread does the whole product (threading costs more).
const PAR_MIN_WEIGHTS: usize = 1 << 15;

enum Storage {
    /// Bit patterns of IEEE half floats, in the panel layout of [`panel_at`] (columns padded
    /// with zeros to whole panels, inputs to whole blocks).
    F16(Vec<u16>),
    F32(Vec<f32>),
    /// `--precision q8`: int8 weights with one f32 scale per [`Q8_GROUP`] consecutive inputs
    /// of a row, the weights as `layout` says and the scales as [`q8_scale_at`] (the columns
    /// padded with zeros to whole panels). On AVX2 the activations are quantized to i16 per
    /// row and each group's sum is exact in i32 (`q8_pairs` over the pairs layout, which CPUs
    /// whose best tier is AVX2 store; `q8_int` over panels); elsewhere the weights are
    /// dequantized in registers and the activations stay f32.
    Q8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        layout: Q8Layout,
    },
}

/// Where a q8 matrix's int8 weights lie (the scales always as [`q8_scale_at`] says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Q8Layout {
    /// [`panel_at`]: each column's inputs side by side, the layout the float kernels load
    /// (AVX-512, portable) and `q8_int` reads.
    Panel,
    /// [`pairs_at`]: a panel's 8 columns in the lanes of one register, for `q8_pairs` (AVX2
    /// without AVX-512).
    Pairs,
}

/// Where weight `(col, i)` lies in the pairs layout: panels of [`PANEL`] columns one after
/// another; in a panel, group after group of [`Q8_GROUP`] inputs; in a group, input pair after
/// pair, each pair holding its two inputs of every column of the panel (column after column).
/// One 16-byte load is then one input pair of 8 columns, which `vpmaddwd` multiplies by the
/// same two activations in every lane.
#[inline(always)]
fn pairs_at(k: usize, col: usize, i: usize) -> usize {
    (col / PANEL) * PANEL * k
        + (i / Q8_GROUP) * (PANEL * Q8_GROUP)
        + (i % Q8_GROUP) / 2 * (2 * PANEL)
        + (col % PANEL) * 2
        + i % 2
}

impl Q8Layout {
    /// The layout the best kernels of this CPU read.
    fn for_this_cpu() -> Self {
        if cfg!(target_arch = "x86_64") && Tier::best() == Tier::Avx2 {
            Q8Layout::Pairs
        } else {
            Q8Layout::Panel
        }
    }

    #[inline(always)]
    fn at(self, k: usize, col: usize, i: usize) -> usize {
        match self {
            Q8Layout::Panel => panel_at(k, col, i),
            Q8Layout::Pairs => pairs_at(k, col, i),
        }
    }
}

/// Inputs sharing one int8 scale (as GGML's Q8_0).
pub const Q8_GROUP: usize = 32;

/// Columns per panel of the weight layout: the widest single-row tile, and every tile width the
/// int8 kernels use divides it.
const PANEL: usize = 8;
/// Inputs per block of the weight layout: one AVX-512 load of 16 lanes (two AVX2 loads).
const BLOCK: usize = 16;

/// Where weight `(col, i)` of an int8 or fp16 matrix with `k` inputs lies: panels of
/// [`PANEL`] columns one after another, each holding, block of [`BLOCK`] inputs after block
/// (the last one padded with zeros), its columns' weights side by side. A tile over a panel's
/// columns then reads memory front to back, one stream the hardware prefetcher follows, where
/// rows stored one after another (512 bytes each in base's int8) made every tile eight short
/// streams: 7 GB/s per core against 15 GB/s packed in the same dequantize-and-FMA loop (Zen
/// 4). Only the order of the values changes: each column's sum is the same operations in the
/// same order.
#[inline(always)]
fn panel_at(k: usize, col: usize, i: usize) -> usize {
    (col / PANEL) * PANEL * k.next_multiple_of(BLOCK)
        + (i / BLOCK) * (PANEL * BLOCK)
        + (col % PANEL) * BLOCK
        + i % BLOCK
}

/// A `(out, k)` matrix in the panel layout: `value(col, i)` for each weight, zeros in the
/// padding; panels filled in parallel (model load).
fn panels<T: Copy + Default + Send>(
    out: usize,
    k: usize,
    value: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    let panel = PANEL * k.next_multiple_of(BLOCK);
    let mut w = vec![T::default(); out.next_multiple_of(PANEL) * k.next_multiple_of(BLOCK)];
    w.par_chunks_mut(panel)
        .enumerate()
        .with_min_len(16)
        .for_each(|(p, dst)| {
            for j in 0..PANEL.min(out - p * PANEL) {
                let col = p * PANEL + j;
                for i in 0..k {
                    dst[panel_at(k, j, i)] = value(col, i);
                }
            }
        });
    w
}

/// Where the scale of weight `(col, i)` lies: per panel, group after group, its columns'
/// scales side by side.
#[inline(always)]
fn q8_scale_at(k: usize, col: usize, i: usize) -> usize {
    let groups = k / Q8_GROUP;
    (col / PANEL) * PANEL * groups + (i / Q8_GROUP) * PANEL + col % PANEL
}

/// A `(out, inp)` weight matrix (rows contiguous) and optional bias, stored for [`RowMatmul::forward`].
pub struct RowMatmul {
    out: usize,
    inp: usize,
    weights: Storage,
    /// fp16 weights of a column that were given times a power of two (the decoder's queries,
    /// pre-scaled by head_dim^-0.5 = 1/8) are stored without it and its sum is multiplied by
    /// it here: the same f32 result bit for bit, as a power of two scales every product and
    /// partial sum exactly, where those weights would otherwise stay f32 (twice the traffic)
    /// whenever one of them falls below fp16's normal range once scaled.
    col_scale: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

/// Largest power of two (as its exponent) [`RowMatmul::new`] takes out of a column to find its
/// weights exact in fp16.
const MAX_F16_SHIFT: i32 = 8;

/// Whether fp16 holds `v` exactly (what `f16::from_f32(v).to_f32() == v` says, from the bits:
/// model load checks every decoder weight, and the round trip per value took a tenth of
/// loading base). Zero and ±∞ are exact; NaN is not; a finite value is exact when its
/// magnitude is at most fp16's largest (65504) and its significand has no bits below fp16's
/// last place: 2^(exponent − 10) for normal fp16 (exponent ≥ −14), 2^−24 below that.
fn f16_exact(v: f32) -> bool {
    let bits = v.to_bits() & 0x7fff_ffff;
    if bits == 0 || bits == 0x7f80_0000 {
        return true;
    }
    let biased = (bits >> 23) as i32;
    if biased == 0xff || biased == 0 {
        // NaN, or an f32 subnormal (below 2^-126, far under fp16's smallest 2^-24).
        return false;
    }
    let exponent = biased - 127;
    if exponent > 15 || (exponent == 15 && bits & 0x7f_ffff > 0x7f_e000) {
        // Past 65504 (0x1.ffcp15).
        return false;
    }
    // The significand's last bit is worth 2^(exponent − 23); fp16's last place here is
    // 2^(exponent − 10) when normal, 2^-24 when subnormal.
    let dropped = exponent.max(-14) - 10 - (exponent - 23);
    if dropped >= 24 {
        return false;
    }
    let significand = (bits & 0x7f_ffff) | 0x80_0000;
    significand & ((1u32 << dropped) - 1) == 0
}

impl RowMatmul {
    /// `weight` is `(out, inp)` row-major; `bias` has `out` values.
    pub fn new(weight: &[f32], out: usize, inp: usize, bias: Option<Vec<f32>>) -> Self {
        debug_assert_eq!(weight.len(), out * inp);
        // Per column, the smallest 2^e that makes its weights exact fp16 (see `col_scale`).
        let shifts: Option<Vec<i32>> = if inp == 0 {
            Some(vec![0; out])
        } else {
            weight
                .par_chunks(inp)
                .map(|col| {
                    (0..=MAX_F16_SHIFT).find(|&e| {
                        let f = (e as f32).exp2();
                        col.iter().all(|&v| f16_exact(v * f))
                    })
                })
                .collect()
        };
        // No f32 copy when fp16 holds every value (keeps the load-time peak down).
        let (weights, col_scale) = match shifts {
            Some(e) => {
                let muls: Vec<f32> = e.iter().map(|&e| (e as f32).exp2()).collect();
                let bits = panels(out, inp, |c, i| {
                    half::f16::from_f32(weight[c * inp + i] * muls[c]).to_bits()
                });
                let scale = e
                    .iter()
                    .any(|&e| e != 0)
                    .then(|| e.iter().map(|&e| (-e as f32).exp2()).collect());
                (Storage::F16(bits), scale)
            }
            None => (Storage::F32(weight.to_vec()), None),
        };
        Self {
            out,
            inp,
            weights,
            col_scale,
            bias,
        }
    }

    /// fp16 weights (`(out, inp)` row-major, as bit patterns) kept as fp16: what
    /// [`RowMatmul::new`] keeps for weights fp16 holds exactly, without an f32 copy first.
    pub fn from_f16_bits(bits: &[u16], out: usize, inp: usize, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(bits.len(), out * inp, "fp16 weights are not ({out}, {inp})");
        Self {
            out,
            inp,
            weights: Storage::F16(panels(out, inp, |c, i| bits[c * inp + i])),
            col_scale: None,
            bias,
        }
    }

    /// Symmetric int8 per group of [`Q8_GROUP`] inputs (`inp` must be a multiple of it);
    /// groups are quantized in parallel (model load).
    pub fn quantized(weight: &[f32], out: usize, inp: usize, bias: Option<Vec<f32>>) -> Self {
        Self::quantized_in(weight, out, inp, bias, Q8Layout::for_this_cpu())
    }

    /// [`RowMatmul::quantized`] into a given layout (the tests build both on every CPU).
    fn quantized_in(
        weight: &[f32],
        out: usize,
        inp: usize,
        bias: Option<Vec<f32>>,
        layout: Q8Layout,
    ) -> Self {
        debug_assert_eq!(weight.len(), out * inp);
        Self::quantized_with(out, inp, bias, layout, |i, g| {
            g.copy_from_slice(&weight[i * Q8_GROUP..][..Q8_GROUP])
        })
    }

    /// [`RowMatmul::quantized`] of fp16 weights (bit patterns), converted a group at a time:
    /// the same int8 values as from their f32 copy, without making one.
    pub fn quantized_f16_bits(
        bits: &[u16],
        out: usize,
        inp: usize,
        bias: Option<Vec<f32>>,
    ) -> Self {
        debug_assert_eq!(bits.len(), out * inp);
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        Self::quantized_with(out, inp, bias, Q8Layout::for_this_cpu(), |i, g| {
            // `half`'s slice conversion (F16C, 8 at a time; exact, as one by one): converting
            // each value with its own feature check was ~10 % of a tiny.en q8 load.
            bits[i * Q8_GROUP..][..Q8_GROUP]
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(g)
        })
    }

    /// Quantize group `i` (row-major: row `i / (inp / Q8_GROUP)`) after `group(i, buf)` fills
    /// `buf` with its f32 values; panels in parallel.
    fn quantized_with(
        out: usize,
        inp: usize,
        bias: Option<Vec<f32>>,
        layout: Q8Layout,
        group: impl Fn(usize, &mut [f32; Q8_GROUP]) + Sync,
    ) -> Self {
        assert_eq!(inp % Q8_GROUP, 0, "q8 needs whole groups of inputs");
        let groups = inp / Q8_GROUP;
        let padded = out.next_multiple_of(PANEL);
        let mut q = vec![0i8; padded * inp];
        let mut scales = vec![0f32; padded * groups];
        let tier = Tier::best();
        q.par_chunks_mut(PANEL * inp)
            .zip(scales.par_chunks_mut(PANEL * groups))
            .enumerate()
            .with_min_len(16)
            .for_each(|(p, (qp, sp))| {
                for j in 0..PANEL.min(out - p * PANEL) {
                    let col = p * PANEL + j;
                    for g in 0..groups {
                        let mut f = [0f32; Q8_GROUP];
                        group(col * groups + g, &mut f);
                        let mut dst = [0i8; Q8_GROUP];
                        let i = g * Q8_GROUP;
                        sp[q8_scale_at(inp, j, i)] = quantize_group(tier, &f, &mut dst);
                        for (t, &v) in dst.iter().enumerate() {
                            qp[layout.at(inp, j, i + t)] = v;
                        }
                    }
                }
            });
        Self {
            out,
            inp,
            weights: Storage::Q8 { q, scales, layout },
            col_scale: None,
            bias,
        }
    }
}

/// fp16 bit patterns to f32 (exact), with `half`'s vectorized slice conversion.
pub fn f16_bits_to_f32(bits: &[u16]) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut out = vec![0f32; bits.len()];
    bits.reinterpret_cast::<half::f16>()
        .convert_to_f32_slice(&mut out);
    out
}

/// One group of weights to int8 (`dst`), returning its scale.
fn quantize_group(tier: Tier, g: &[f32; Q8_GROUP], dst: &mut [i8]) -> f32 {
    #[inline(always)]
    fn body(g: &[f32; Q8_GROUP], dst: &mut [i8]) -> f32 {
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (d, &v) in dst.iter_mut().zip(g) {
            *d = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        amax / 127.0
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Vectorized rounding needs SSE4.1 (the baseline build calls libm per value).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(g: &[f32; Q8_GROUP], dst: &mut [i8]) -> f32 {
            body(g, dst)
        }
        if tier >= Tier::Avx2 {
            // SAFETY: `tier` is available (Tier::best), so the CPU has AVX2.
            return unsafe { avx2(g, dst) };
        }
    }
    let _ = tier;
    body(g, dst)
}

impl RowMatmul {
    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// The weight rows `ids`, concatenated, exactly as given to [`RowMatmul::new`] (a lookup
    /// table: token embeddings). `None` for an id out of range or int8 weights.
    pub fn rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let k = self.inp;
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let i = id as usize;
            if i >= self.out {
                return None;
            }
            match &self.weights {
                Storage::F16(w) => {
                    let s = self.col_scale.as_ref().map_or(1.0, |s| s[i]);
                    out.extend(
                        (0..k).map(|j| half::f16::from_bits(w[panel_at(k, i, j)]).to_f32() * s),
                    )
                }
                Storage::F32(w) => out.extend_from_slice(&w[i * k..][..k]),
                Storage::Q8 { .. } => return None,
            }
        }
        Some(out)
    }

    /// Whether the weights are held as fp16 (exactly).
    pub fn is_f16(&self) -> bool {
        matches!(self.weights, Storage::F16(_))
    }

    /// The whole weight matrix in f32 when it is held as fp16 (each value exact), for a GEMM
    /// over many rows; `None` otherwise.
    pub fn f16_weights_as_f32(&self) -> Option<Vec<f32>> {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        let Storage::F16(bits) = &self.weights else {
            return None;
        };
        let k = self.inp;
        let mut w = vec![0f32; self.out * k];
        if k == 0 {
            return Some(w);
        }
        // Row-major again, a block of a column at a time.
        w.par_chunks_mut(k)
            .enumerate()
            .with_min_len(64)
            .for_each(|(col, row)| {
                for (b, dst) in row.chunks_mut(BLOCK).enumerate() {
                    let at = panel_at(k, col, b * BLOCK);
                    bits[at..at + dst.len()]
                        .reinterpret_cast::<half::f16>()
                        .convert_to_f32_slice(dst);
                }
                if let Some(s) = &self.col_scale {
                    row.iter_mut().for_each(|v| *v *= s[col]);
                }
            });
        Some(w)
    }

    /// The bias, as given.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// `x` is `(rows, inp)` row-major; returns `(rows, out)`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.forward_on(Tier::best(), x, rows)
    }

    /// [`RowMatmul::forward`] on the kernels of `tier` (one of [`Tier::available`]).
    pub fn forward_on(&self, tier: Tier, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(
            Tier::available().contains(&tier),
            "{tier:?} kernels need CPU features this one lacks"
        );
        let (n, k) = (self.out, self.inp);
        assert_eq!(x.len(), rows * k, "input is not (rows, {k})");
        let mut y = vec![0f32; rows * n];
        if rows == 0 || n == 0 {
            return y;
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk = if n * k < PAR_MIN_WEIGHTS || threads == 1 {
            n
        } else {
            // A few chunks per thread so an uneven split evens out; multiples of 8 columns.
            n.div_ceil(threads * 4).next_multiple_of(8).max(32)
        };
        let out = OutPtr(y.as_mut_ptr());
        // q8 on AVX2 multiplies in integers (see `q8_int`): the rows are quantized once here.
        let int_rows = match &self.weights {
            Storage::Q8 { .. } if tier == Tier::Avx2 => Some(IntRows::new(tier, x, rows, k)),
            _ => None,
        };
        let run = |c0: usize| {
            let cols = c0..(c0 + chunk).min(n);
            // SAFETY: each task writes only the columns `cols` of `y` (disjoint between tasks),
            // every index below is < rows * n, and `y` outlives the parallel loop.
            unsafe { self.columns(tier, x, int_rows.as_ref(), rows, cols, out) };
        };
        if chunk >= n {
            run(0);
        } else {
            (0..n)
                .step_by(chunk)
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(run);
        }
        y
    }

    /// Computes columns `cols` of every output row.
    ///
    /// # Safety
    /// `y` points to `rows * self.out` floats that no other thread writes in these columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns(
        &self,
        tier: Tier,
        x: &[f32],
        int_rows: Option<&IntRows>,
        rows: usize,
        cols: std::ops::Range<usize>,
        y: OutPtr,
    ) {
        let (n, k) = (self.out, self.inp);
        let ys = y.0;
        match (&self.weights, int_rows) {
            (Storage::F16(w), _) => kernel::f16_rows(tier, x, rows, w, &[], k, n, cols.clone(), ys),
            (Storage::F32(w), _) => kernel::f32_rows(tier, x, rows, w, &[], k, n, cols.clone(), ys),
            #[cfg(target_arch = "x86_64")]
            (
                Storage::Q8 {
                    q,
                    scales,
                    layout: Q8Layout::Pairs,
                },
                Some(xi),
            ) => q8_pairs::rows(xi, rows, q, scales, k, n, cols.clone(), ys),
            #[cfg(target_arch = "x86_64")]
            (
                Storage::Q8 {
                    q,
                    scales,
                    layout: Q8Layout::Panel,
                },
                Some(xi),
            ) => q8_int::rows(xi, rows, q, scales, k, n, cols.clone(), ys),
            (
                Storage::Q8 {
                    q,
                    scales,
                    layout: Q8Layout::Panel,
                },
                _,
            ) => kernel::q8_rows(tier, x, rows, q, scales, k, n, cols.clone(), ys),
            // No other kernel reads this layout (the tier is the portable one wherever the
            // layout is the CPU's own).
            (
                Storage::Q8 {
                    q,
                    scales,
                    layout: Q8Layout::Pairs,
                },
                _,
            ) => kernel::portable_rows(x, rows, k, n, cols.clone(), ys, |c, i| {
                q[pairs_at(k, c, i)] as f32 * scales[q8_scale_at(k, c, i)]
            }),
        }
        if let Some(s) = &self.col_scale {
            for m in 0..rows {
                for c in cols.clone() {
                    *ys.add(m * n + c) *= s[c];
                }
            }
        }
        if let Some(b) = &self.bias {
            for m in 0..rows {
                for c in cols.clone() {
                    *ys.add(m * n + c) += b[c];
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns (see `RowMatmul::forward`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

mod kernel {
    //! `y[m][c] = Σₖ x[m][k]·w[c][k]` for `mr` rows and the columns `cols`. `y` has row
    //! stride `n`. `s` holds the int8 group scales (empty for float weights).

    use super::Tier;
    use std::ops::Range;

    /// The tile order every SIMD kernel uses: column groups of `nr` outermost (a group's
    /// weights come from memory once, then from L1 for every further block of up to
    /// `max_rows` rows). Calls `tile(first_row, rows, first_column, wide)`: `wide` is a full
    /// group of `nr` columns, else one column of a partial last group.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn for_each_tile(
        mr: usize,
        cols: Range<usize>,
        nr: usize,
        max_rows: usize,
        mut tile: impl FnMut(usize, usize, usize, bool),
    ) {
        let mut c = cols.start;
        while c < cols.end {
            let width = (cols.end - c).min(nr);
            let mut m0 = 0;
            while m0 < mr {
                let rows = (mr - m0).min(max_rows);
                if width == nr {
                    tile(m0, rows, c, true);
                } else {
                    (c..c + width).for_each(|cc| tile(m0, rows, cc, false));
                }
                m0 += rows;
            }
            c += width;
        }
    }

    macro_rules! rows_fn {
        ($name:ident, $t:ty, $to_f32:expr) => {
            /// # Safety
            /// `y` is valid for `mr` rows of stride `n` covering `cols`; `tier` is one of
            /// [`Tier::available`].
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name(
                tier: Tier,
                x: &[f32],
                mr: usize,
                w: &[$t],
                s: &[f32],
                k: usize,
                n: usize,
                cols: Range<usize>,
                y: *mut f32,
            ) {
                #[cfg(target_arch = "x86_64")]
                match tier {
                    t if t >= Tier::Avx512 && k % 16 == 0 => {
                        return avx512::$name::rows(x, mr, w, s, k, n, cols, y)
                    }
                    t if t >= Tier::Avx2 && k % 8 == 0 => {
                        return avx2::$name::rows(x, mr, w, s, k, n, cols, y)
                    }
                    _ => {}
                }
                let _ = tier;
                let to_f32 = $to_f32;
                portable_rows(x, mr, k, n, cols, y, |c, i| to_f32(w, s, c, i, k))
            }
        };
    }

    /// The portable kernel over any weight layout: `weight(c, i)` is weight `(c, i)` in f32.
    ///
    /// # Safety
    /// `y` is valid for `mr` rows of stride `n` covering `cols`.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub unsafe fn portable_rows(
        x: &[f32],
        mr: usize,
        k: usize,
        n: usize,
        cols: Range<usize>,
        y: *mut f32,
        weight: impl Fn(usize, usize) -> f32,
    ) {
        for m in 0..mr {
            let xr = &x[m * k..][..k];
            for c in cols.clone() {
                // 16 partial sums, as the vector kernel keeps, so LLVM may vectorize.
                let mut acc = [0f32; 16];
                let mut i = 0;
                while i + 16 <= k {
                    for l in 0..16 {
                        acc[l] += xr[i + l] * weight(c, i + l);
                    }
                    i += 16;
                }
                let mut sum: f32 = acc.iter().sum();
                for j in i..k {
                    sum += xr[j] * weight(c, j);
                }
                *y.add(m * n + c) = sum;
            }
        }
    }

    rows_fn!(f16_rows, u16, |w: &[u16],
                             _: &[f32],
                             c: usize,
                             i: usize,
                             k: usize| {
        half::f16::from_bits(w[super::panel_at(k, c, i)]).to_f32()
    });
    rows_fn!(f32_rows, f32, |w: &[f32],
                             _: &[f32],
                             c: usize,
                             i: usize,
                             k: usize| w
        [c * k + i]);
    rows_fn!(q8_rows, i8, |w: &[i8],
                           s: &[f32],
                           c: usize,
                           i: usize,
                           k: usize| {
        w[super::panel_at(k, c, i)] as f32 * s[super::q8_scale_at(k, c, i)]
    });

    /// How a stored weight type becomes f32 lanes of any width (the q8 scale applied per
    /// group: 8 and 16 lanes both divide a group of 32, so one load is one group).
    #[cfg(target_arch = "x86_64")]
    pub(crate) trait Weight: Sized {
        /// Weights `(col, i..i + S::LANES)` of a matrix with `k` inputs.
        ///
        /// # Safety
        /// `S`'s features present; `w` (and `s`) hold those weights (and their scales).
        unsafe fn lanes<S: Simd>(
            w: *const Self,
            s: *const f32,
            k: usize,
            col: usize,
            i: usize,
        ) -> S::V;
    }

    /// The panel layout (`panel_at`): 8 and 16 lanes both lie within one block of a column.
    #[cfg(target_arch = "x86_64")]
    impl Weight for u16 {
        #[inline(always)]
        unsafe fn lanes<S: Simd>(
            w: *const u16,
            _: *const f32,
            k: usize,
            col: usize,
            i: usize,
        ) -> S::V {
            S::load_f16(w.add(super::panel_at(k, col, i)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Weight for f32 {
        #[inline(always)]
        unsafe fn lanes<S: Simd>(
            w: *const f32,
            _: *const f32,
            k: usize,
            col: usize,
            i: usize,
        ) -> S::V {
            S::load(w.add(col * k + i))
        }
    }

    /// The panel layout (`panel_at`): 8 and 16 lanes both lie within one block of a column (q8
    /// in the pairs layout never comes here: `columns`).
    #[cfg(target_arch = "x86_64")]
    impl Weight for i8 {
        #[inline(always)]
        unsafe fn lanes<S: Simd>(
            w: *const i8,
            s: *const f32,
            k: usize,
            col: usize,
            i: usize,
        ) -> S::V {
            S::mul(
                S::load_i8(w.add(super::panel_at(k, col, i))),
                S::splat(*s.add(super::q8_scale_at(k, col, i))),
            )
        }
    }

    #[cfg(target_arch = "x86_64")]
    use crate::simd::Simd;

    /// The SIMD kernels, written once on [`Simd`] and compiled per vector width: one module per
    /// weight type with `tile` (`MR` rows × `NR` columns from column `c`, the whole inner
    /// dimension), the weights read through [`Weight`], and the driver `rows` over any number
    /// of rows and a range of columns. `nr5`, where not 0, is the width of the one 5-row tile
    /// that exactly 5 rows take (see `sweep5`). `nr` is the tile width for 1, 2, 3 and 4 rows: fewer rows → more columns per
    /// tile, so enough independent sums are in flight to hide the FMA latency, within the
    /// register file (accumulators + row vectors + one weight vector; beyond it LLVM spills).
    #[cfg(target_arch = "x86_64")]
    macro_rules! simd_rows {
        (
            features = $feat:literal, simd = $S:ty,
            nr = [$nr1:literal, $nr2:literal, $nr3:literal, $nr4:literal], nr5 = $nr5:literal,
            $($m:ident: $t:ty),* $(,)?
        ) => {$(
            pub mod $m {
                use crate::rowmatmul::kernel::Weight;
                use crate::simd::Simd;
                use std::ops::Range;

                #[target_feature(enable = $feat)]
                #[allow(clippy::needless_range_loop)]
                unsafe fn tile<const MR: usize, const NR: usize>(
                    x: *const f32,
                    w: *const $t,
                    s: *const f32,
                    k: usize,
                    c: usize,
                    n: usize,
                    y: *mut f32,
                ) {
                    // Zeroed memory rather than a repeat expression: that becomes an init loop
                    // that LLVM then fails to keep in registers.
                    let mut acc: [[<$S as Simd>::V; NR]; MR] = std::mem::zeroed();
                    let mut xv: [<$S as Simd>::V; MR] = std::mem::zeroed();
                    let mut i = 0;
                    // Constant-index loops (fully unrolled) keep `acc` and `xv` in registers.
                    while i < k {
                        for m in 0..MR {
                            xv[m] = <$S>::load(x.add(m * k + i));
                        }
                        for j in 0..NR {
                            let wv = <$t as Weight>::lanes::<$S>(w, s, k, c + j, i);
                            for m in 0..MR {
                                acc[m][j] = <$S>::fmadd(xv[m], wv, acc[m][j]);
                            }
                        }
                        i += <$S>::LANES;
                    }
                    for m in 0..MR {
                        for j in 0..NR {
                            *y.add(m * n + c + j) = <$S>::reduce(acc[m][j]);
                        }
                    }
                }

                /// Up to 4 rows × `NR` columns.
                #[target_feature(enable = $feat)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn block<const NR: usize>(
                    rows: usize,
                    x: *const f32,
                    w: *const $t,
                    s: *const f32,
                    k: usize,
                    c: usize,
                    n: usize,
                    y: *mut f32,
                ) {
                    match rows {
                        1 => tile::<1, NR>(x, w, s, k, c, n, y),
                        2 => tile::<2, NR>(x, w, s, k, c, n, y),
                        3 => tile::<3, NR>(x, w, s, k, c, n, y),
                        _ => tile::<4, NR>(x, w, s, k, c, n, y),
                    }
                }

                /// Every tile of the output block, in `for_each_tile`'s order.
                #[target_feature(enable = $feat)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn sweep<const NR: usize>(
                    mr: usize,
                    x: *const f32,
                    w: *const $t,
                    s: *const f32,
                    k: usize,
                    n: usize,
                    cols: Range<usize>,
                    y: *mut f32,
                ) {
                    super::super::for_each_tile(mr, cols, NR, 4, |m0, rows, c, wide| {
                        let (xm, ym) = (x.add(m0 * k), y.add(m0 * n));
                        if wide {
                            block::<NR>(rows, xm, w, s, k, c, n, ym);
                        } else {
                            block::<1>(rows, xm, w, s, k, c, n, ym);
                        }
                    });
                }

                /// Exactly 5 rows (a beam of 5) as one tile per column group: as 4 + 1 rows
                /// the fifth row's tile converted every weight again (the int8 dequantization
                /// is most of a tile's work), and the sweep was a quarter of a beam-5 run.
                #[target_feature(enable = $feat)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn sweep5<const NR: usize>(
                    x: *const f32,
                    w: *const $t,
                    s: *const f32,
                    k: usize,
                    n: usize,
                    cols: Range<usize>,
                    y: *mut f32,
                ) {
                    super::super::for_each_tile(5, cols, NR, 5, |_, _, c, wide| {
                        if wide {
                            tile::<5, NR>(x, w, s, k, c, n, y);
                        } else {
                            tile::<5, 1>(x, w, s, k, c, n, y);
                        }
                    });
                }

                /// # Safety
                /// `k` a multiple of the lane count, the features present, `y` as in the
                /// portable version.
                #[allow(clippy::too_many_arguments)]
                pub unsafe fn rows(
                    x: &[f32],
                    mr: usize,
                    w: &[$t],
                    s: &[f32],
                    k: usize,
                    n: usize,
                    cols: Range<usize>,
                    y: *mut f32,
                ) {
                    debug_assert!(x.len() >= mr * k && w.len() >= cols.end * k);
                    let (x, w, s) = (x.as_ptr(), w.as_ptr(), s.as_ptr());
                    match mr {
                        1 => sweep::<$nr1>(mr, x, w, s, k, n, cols, y),
                        2 => sweep::<$nr2>(mr, x, w, s, k, n, cols, y),
                        3 => sweep::<$nr3>(mr, x, w, s, k, n, cols, y),
                        5 if $nr5 > 0 => sweep5::<{ if $nr5 > 0 { $nr5 } else { 1 } }>(x, w, s, k, n, cols, y),
                        _ => sweep::<$nr4>(mr, x, w, s, k, n, cols, y),
                    }
                }
            }
        )*};
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        // 32 registers; with 16 accumulators LLVM spilled and shuffled them every iteration
        // (seen in the disassembly), so at most 12.
        simd_rows!(features = "avx512f", simd = crate::simd::Avx512, nr = [8, 6, 4, 3],
            // Five fp16 rows: 5 × 3 (15 accumulators, 21 registers) measured 0.98× the 4 + 1
            // tiles on a tiny.en f32 beam-5 run, where 5 × 2 was 1.06× (Zen 4).
            nr5 = 3, f16_rows: u16, f32_rows: f32);
        // Int8 tiles stay within one panel (widths dividing `PANEL`).
        simd_rows!(features = "avx512f", simd = crate::simd::Avx512, nr = [8, 4, 4, 2],
            nr5 = 2, q8_rows: i8);
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        // 16 registers: 4 rows × 2 columns = 8 accumulators + 4 row vectors + 1 weight. Five
        // rows × 2 columns take all 16 (10 accumulators, 5 row vectors, one weight vector at a
        // time; no spill in the disassembly): a base f32 beam-5 run on the 5-minute chapter
        // took 0.85× the time of 4 + 1 rows, whose one-row tile waited on two FMA chains
        // (Zen 3).
        simd_rows!(features = "avx2,fma,f16c", simd = crate::simd::Avx2, nr = [8, 5, 3, 2],
            nr5 = 2, f16_rows: u16, f32_rows: f32);
        simd_rows!(features = "avx2,fma,f16c", simd = crate::simd::Avx2, nr = [8, 4, 2, 2],
            nr5 = 0, q8_rows: i8);
    }
}

/// Activations for the integer q8 kernels: each row quantized to ±[`X_MAX`] with its own scale.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 `q8_pairs`, `q8_int`
struct IntRows {
    q: Vec<i16>,
    scales: Vec<f32>,
}

/// 15 bits: a group's sum, 32 × 127 × 32767, stays far inside i32; the rounding (half a step of
/// the row's largest value) is ~250× finer than the weights' int8 steps.
const X_MAX: i32 = 32767;

impl IntRows {
    fn new(tier: Tier, x: &[f32], rows: usize, k: usize) -> Self {
        let mut q = vec![0i16; rows * k];
        let scales = x
            .chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .map(|(src, dst)| crate::intgemm::quantize(tier, src, dst, X_MAX))
            .collect();
        Self { q, scales }
    }
}

#[cfg(target_arch = "x86_64")]
mod q8_int {
    //! `q8_rows` for AVX2 with the activations in i16 (see [`super::IntRows`]): per group of 32
    //! weights, two sign-extending loads and, per row, two `vpmaddwd` whose exact i32 sum is
    //! scaled once by the group's scale into an f32 accumulator. Converting every weight to
    //! f32 instead took ~17 instructions per 32 weights before any arithmetic, which made
    //! single-sequence decoder steps compute-bound on AVX2 CPUs.

    use super::Q8_GROUP;
    use crate::simd::{Avx2, Simd};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows × columns of one tile for 1 to 5 rows: accumulators + 2 weight vectors + scale +
    /// temporaries within 16 registers (the rows are read from L1, not held).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NR: usize>(
        x: *const i16,
        xs: *const f32,
        w: *const i8,
        s: *const f32,
        k: usize,
        c: usize,
        n: usize,
        y: *mut f32,
    ) {
        let mut acc: [[__m256; NR]; MR] = std::mem::zeroed();
        let groups = k / Q8_GROUP;
        for g in 0..groups {
            let i = g * Q8_GROUP;
            for j in 0..NR {
                let (lo, hi) = (
                    super::panel_at(k, c + j, i),
                    super::panel_at(k, c + j, i + 16),
                );
                let w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(lo) as *const __m128i));
                let w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(hi) as *const __m128i));
                let scale = _mm256_set1_ps(*s.add(super::q8_scale_at(k, c + j, i)));
                for m in 0..MR {
                    let xp = x.add(m * k + i);
                    let lo = _mm256_madd_epi16(_mm256_loadu_si256(xp as *const __m256i), w_lo);
                    let hi =
                        _mm256_madd_epi16(_mm256_loadu_si256(xp.add(16) as *const __m256i), w_hi);
                    let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
                    acc[m][j] = _mm256_fmadd_ps(sum, scale, acc[m][j]);
                }
            }
        }
        for m in 0..MR {
            let sx = *xs.add(m);
            for j in 0..NR {
                *y.add(m * n + c + j) = Avx2::reduce(acc[m][j]) * sx;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const NR: usize>(
        rows: usize,
        x: *const i16,
        xs: *const f32,
        w: *const i8,
        s: *const f32,
        k: usize,
        c: usize,
        n: usize,
        y: *mut f32,
    ) {
        match rows {
            1 => tile::<1, NR>(x, xs, w, s, k, c, n, y),
            2 => tile::<2, NR>(x, xs, w, s, k, c, n, y),
            3 => tile::<3, NR>(x, xs, w, s, k, c, n, y),
            4 => tile::<4, NR>(x, xs, w, s, k, c, n, y),
            _ => tile::<5, NR>(x, xs, w, s, k, c, n, y),
        }
    }

    /// The float kernels' tile order (`for_each_tile`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sweep<const NR: usize>(
        mr: usize,
        x: &super::IntRows,
        w: *const i8,
        s: *const f32,
        k: usize,
        n: usize,
        cols: Range<usize>,
        y: *mut f32,
    ) {
        // Exactly 5 rows (a beam of 5) take one 5-row tile: as 4 + 1 rows the fifth row's tile
        // loaded and sign-extended every weight again. LLVM spills a few of the 5 × 2 tile's
        // accumulators; still, a tiny.en q8 beam-5 run took 0.95× the time of 4 + 1 tiles, and
        // 0.99× that of 5 × 1 tiles, which do not spill (Zen 3).
        let max_rows = if mr == 5 { 5 } else { 4 };
        super::kernel::for_each_tile(mr, cols, NR, max_rows, |m0, rows, c, wide| {
            let xm = x.q.as_ptr().add(m0 * k);
            let (xs, ym) = (x.scales.as_ptr().add(m0), y.add(m0 * n));
            if wide {
                block::<NR>(rows, xm, xs, w, s, k, c, n, ym);
            } else {
                block::<1>(rows, xm, xs, w, s, k, c, n, ym);
            }
        });
    }

    /// # Safety
    /// AVX2 and FMA present; `k` a multiple of [`Q8_GROUP`]; `x` holds `mr` rows of `k`;
    /// `w` and `s` cover `cols`; `y` as in the portable `q8_rows`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        x: &super::IntRows,
        mr: usize,
        w: &[i8],
        s: &[f32],
        k: usize,
        n: usize,
        cols: Range<usize>,
        y: *mut f32,
    ) {
        debug_assert!(x.q.len() >= mr * k && x.scales.len() >= mr && w.len() >= cols.end * k);
        debug_assert!(k.is_multiple_of(Q8_GROUP) && s.len() >= cols.end * (k / Q8_GROUP));
        debug_assert_eq!(super::BLOCK * 2, Q8_GROUP);
        let (w, s) = (w.as_ptr(), s.as_ptr());
        // Tile widths dividing `PANEL`.
        match mr {
            1 => sweep::<8>(mr, x, w, s, k, n, cols, y),
            2 => sweep::<4>(mr, x, w, s, k, n, cols, y),
            _ => sweep::<2>(mr, x, w, s, k, n, cols, y),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod q8_pairs {
    //! `q8_rows` for AVX2 over the pairs layout ([`super::pairs_at`]), activations in i16 (see
    //! [`super::IntRows`]): a panel's 8 columns lie in the lanes of one register, so per input
    //! pair and row one `vpmaddwd` (the row's two activations broadcast) and one `vpaddd` add
    //! to all 8 columns' group sums, exact in i32; each group's sums are then converted and
    //! scaled once per row for all 8 columns. `q8_int` over the panel layout spends a
    //! conversion and an FMA per row, column and group, which competed with `vpmaddwd` for
    //! the multiply pipes: five rows of tiny.en's output projection took 1.24–1.49 ms here
    //! against 2.34–2.47 ms (Zen 3, from memory, 2 threads, scratch benchmark).
    //!
    //! Per column: `acc = fma(f32(Σ group), scale, acc)` group after group from zero, then
    //! `y = acc · row scale`.

    use super::{PANEL, Q8_GROUP};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows `0..R` of `x` (row stride `k`) against one panel (`w`, `s` at its start): the 8
    /// columns from `c`, of which the first `cols` are written.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    unsafe fn panel<const R: usize>(
        x: *const i16,
        xs: *const f32,
        k: usize,
        w: *const i8,
        s: *const f32,
        y: *mut f32,
        n: usize,
        c: usize,
        cols: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        for g in 0..k / Q8_GROUP {
            let wg = w.add(g * PANEL * Q8_GROUP);
            let mut sums = [_mm256_setzero_si256(); R];
            for p in 0..Q8_GROUP / 2 {
                let wv =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.add(p * 2 * PANEL) as *const __m128i));
                for r in 0..R {
                    let pair = (x.add(r * k + g * Q8_GROUP + 2 * p) as *const i32).read_unaligned();
                    sums[r] =
                        _mm256_add_epi32(sums[r], _mm256_madd_epi16(_mm256_set1_epi32(pair), wv));
                }
            }
            let scale = _mm256_loadu_ps(s.add(g * PANEL));
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), scale, acc[r]);
            }
        }
        for r in 0..R {
            let v = _mm256_mul_ps(acc[r], _mm256_set1_ps(*xs.add(r)));
            if cols == PANEL {
                // A whole panel: one store (a copy through a stack array was a `memcpy` call
                // per row and panel, ~0.4 % of a beam-5 run).
                _mm256_storeu_ps(y.add(r * n + c), v);
            } else {
                let mut out = [0f32; PANEL];
                _mm256_storeu_ps(out.as_mut_ptr(), v);
                for (j, &v) in out.iter().take(cols).enumerate() {
                    *y.add(r * n + c + j) = v;
                }
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA present; `k` a multiple of [`Q8_GROUP`]; `x` holds `mr` rows of `k`; `w`
    /// and `s` hold the whole panels covering `cols`, which starts on a panel; `y` as in the
    /// portable `q8_rows`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        x: &super::IntRows,
        mr: usize,
        w: &[i8],
        s: &[f32],
        k: usize,
        n: usize,
        cols: Range<usize>,
        y: *mut f32,
    ) {
        debug_assert!(x.q.len() >= mr * k && x.scales.len() >= mr);
        debug_assert!(w.len() >= cols.end.next_multiple_of(PANEL) * k);
        // A start inside a panel would read a whole panel past the padded end.
        assert!(
            k.is_multiple_of(Q8_GROUP) && cols.start.is_multiple_of(PANEL),
            "q8 pairs: columns from {} over {k} inputs",
            cols.start
        );
        let (w, s) = (w.as_ptr(), s.as_ptr());
        let groups = k / Q8_GROUP;
        for c in cols.clone().step_by(PANEL) {
            let (wp, sp) = (w.add(c * k), s.add(c * groups));
            let width = (cols.end - c).min(PANEL);
            // Up to five rows per pass: 5 sums + 5 accumulators + weights in 16 registers.
            let mut m0 = 0;
            while m0 < mr {
                let rows = (mr - m0).min(5);
                let (xm, xs, ym) = (
                    x.q.as_ptr().add(m0 * k),
                    x.scales.as_ptr().add(m0),
                    y.add(m0 * n),
                );
                match rows {
                    1 => panel::<1>(xm, xs, k, wp, sp, ym, n, c, width),
                    2 => panel::<2>(xm, xs, k, wp, sp, ym, n, c, width),
                    3 => panel::<3>(xm, xs, k, wp, sp, ym, n, c, width),
                    4 => panel::<4>(xm, xs, k, wp, sp, ym, n, c, width),
                    _ => panel::<5>(xm, xs, k, wp, sp, ym, n, c, width),
                }
                m0 += rows;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bit test says what the fp16 round trip says, for edge cases and many bit patterns.
    #[test]
    fn f16_exact_matches_the_round_trip() {
        let trip = |v: f32| half::f16::from_f32(v).to_f32() == v;
        let mut cases = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            65504.0,
            65505.0,
            65520.0,
            -65504.0,
            1.0,
            1.0 + 2f32.powi(-10),
            1.0 + 2f32.powi(-11),
            2f32.powi(-14),
            2f32.powi(-24),
            3.0 * 2f32.powi(-24),
            2f32.powi(-25),
            1.5 * 2f32.powi(-24),
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 2.0,
            f32::MAX,
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let bits = s as u32;
            cases.push(f32::from_bits(bits));
            // Short significands with exponents −31..16: fp16's whole range and past both
            // ends.
            cases.push(f32::from_bits(bits & 0x87ff_e000 | 0x3000_0000));
            cases.push(f32::from_bits(bits & 0x8fff_f000 | 0x3000_0000));
            cases.push(f32::from_bits(bits & 0x87ff_ff00 | 0x3800_0000));
            cases.push(f32::from_bits(bits & 0x87ff_e000 | 0x4000_0000));
        }
        for v in cases {
            assert_eq!(f16_exact(v), trip(v), "{v:e} ({:#010x})", v.to_bits());
        }
    }

    fn reference(x: &[f32], rows: usize, w: &[f32], out: usize, inp: usize, b: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; rows * out];
        for m in 0..rows {
            for c in 0..out {
                let mut s = b[c] as f64;
                for i in 0..inp {
                    s += x[m * inp + i] as f64 * w[c * inp + i] as f64;
                }
                y[m * out + c] = s;
            }
        }
        y
    }

    fn check(tier: Tier, rows: usize, out: usize, inp: usize, f16_exact: bool) {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut w: Vec<f32> = (0..out * inp).map(|_| rnd()).collect();
        if f16_exact {
            w.iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        }
        let b: Vec<f32> = (0..out).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * inp).map(|_| rnd()).collect();
        let mm = RowMatmul::new(&w, out, inp, Some(b.clone()));
        assert_eq!(mm.is_f16(), f16_exact);
        let want = reference(&x, rows, &w, out, inp, &b);
        {
            let got = mm.forward_on(tier, &x, rows);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (inp as f64).sqrt();
                assert!(
                    (*g as f64 - w).abs() < tol,
                    "{tier:?} rows {rows} out {out} inp {inp}: [{i}] {g} vs {w}"
                );
            }
            // Each row's bits whatever the rows beside it (the tile it falls in).
            for (r, row) in got.chunks_exact(out).enumerate() {
                let alone = mm.forward_on(tier, &x[r * inp..][..inp], 1);
                assert_eq!(
                    row,
                    &alone[..],
                    "{tier:?} row {r} of {rows} differs from alone"
                );
            }
        }
    }

    /// f16 and f32 weights against f64, for every row count up to a few blocks and odd shapes,
    /// each row as it is alone (harness).
    pub(crate) fn float_weights(tier: Tier) {
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 17] {
            check(tier, rows, 389, 384, true);
        }
        // Enough weights to split across threads, a column count that is not a multiple of 8.
        check(tier, 3, 1027, 64, true);
        // fp32 weights that fp16 cannot hold stay f32.
        check(tier, 5, 100, 96, false);
        // An inner dimension that is a multiple of 8 but not of 16 (AVX2 only; AVX-512 falls back
        // to the portable loop), and one that is neither (portable on every tier).
        check(tier, 2, 33, 40, true);
        check(tier, 2, 33, 50, true);
    }

    /// int8 weights: the dequantized product, close to f32, and a row's result independent of
    /// the rows decoded with it (harness).
    pub(crate) fn q8_weights(tier: Tier) {
        let (out, inp, max_rows) = (77, 384, 8);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..max_rows * inp)
            .map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        // Both layouts on every tier, whichever this CPU stores.
        for layout in [Q8Layout::Panel, Q8Layout::Pairs] {
            q8_layout(tier, &w, &x, out, inp, max_rows, layout);
        }
    }

    fn q8_layout(
        tier: Tier,
        w: &[f32],
        x: &[f32],
        out: usize,
        inp: usize,
        max_rows: usize,
        layout: Q8Layout,
    ) {
        let mm = RowMatmul::quantized_in(w, out, inp, None, layout);
        let Storage::Q8 { q, scales, layout } = &mm.weights else {
            panic!("not q8")
        };
        let deq: Vec<f32> = (0..out * inp)
            .map(|at| {
                let (c, i) = (at / inp, at % inp);
                q[layout.at(inp, c, i)] as f32 * scales[q8_scale_at(inp, c, i)]
            })
            .collect();
        // The AVX2 kernel over the pairs layout, bit for bit its formula: per column
        // `acc = fma(f32(Σ group in i32), scale, acc)` over the groups in order, times the
        // row's scale.
        if tier == Tier::Avx2 && *layout == Q8Layout::Pairs {
            let xi = IntRows::new(tier, x, max_rows, inp);
            let got = mm.forward_on(tier, x, max_rows);
            for (at, g) in got.iter().enumerate() {
                let (m, c) = (at / out, at % out);
                let mut acc = 0f32;
                for grp in 0..inp / Q8_GROUP {
                    let sum: i32 = (grp * Q8_GROUP..(grp + 1) * Q8_GROUP)
                        .map(|i| xi.q[m * inp + i] as i32 * q[pairs_at(inp, c, i)] as i32)
                        .sum();
                    acc = (sum as f32).mul_add(scales[q8_scale_at(inp, c, grp * Q8_GROUP)], acc);
                }
                assert_eq!(
                    g.to_bits(),
                    (acc * xi.scales[m]).to_bits(),
                    "row {m} column {c}"
                );
            }
        }
        let exact = reference(x, max_rows, &deq, out, inp, &vec![0.0; out]);
        let full = reference(x, max_rows, w, out, inp, &vec![0.0; out]);
        {
            let all = mm.forward_on(tier, x, max_rows);
            for (i, ((g, e), f)) in all.iter().zip(&exact).zip(&full).enumerate() {
                // f32 summation, plus on AVX2 the activations' rounding to 15 bits: at most half
                // a step of the row's largest |x| per input, times that input's |weight|.
                let mut bound = 1e-4;
                if tier == Tier::Avx2 {
                    let row = &x[(i / out) * inp..][..inp];
                    let step = row.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / X_MAX as f64;
                    let w_abs: f64 = deq[(i % out) * inp..][..inp]
                        .iter()
                        .map(|v| v.abs() as f64)
                        .sum();
                    bound += 0.5 * step * w_abs;
                }
                assert!(
                    (*g as f64 - e).abs() < bound,
                    "{tier:?}: {g} vs dequantized {e} (bound {bound})"
                );
                // Quantization error: half a step (amax/254) per weight, summed over 384 inputs.
                assert!((*g as f64 - f).abs() < 0.05, "{tier:?}: {g} vs f32 {f}");
            }
            // A row's result does not depend on the rows decoded with it (batched decoding
            // must give the tokens of decoding alone), whatever tile the row count picks.
            for rows in 1..max_rows {
                let got = mm.forward_on(tier, &x[..rows * inp], rows);
                assert_eq!(got, all[..rows * out], "{tier:?}, {rows} rows");
            }
        }
    }

    /// Weights that fp16 holds exactly give the same matrix from their bits as from f32, and
    /// the same int8 blocks either way (the loader builds from the file's fp16 directly).
    #[test]
    fn fp16_bits_build_what_their_f32_copy_builds() {
        let (out, inp, rows) = (70, 96, 3);
        let w16: Vec<half::f16> = (0..out * inp)
            .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0))
            .collect();
        let bits: Vec<u16> = w16.iter().map(|h| h.to_bits()).collect();
        let w32: Vec<f32> = w16.iter().map(|h| h.to_f32()).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 10.0).collect();
        let x: Vec<f32> = (0..rows * inp).map(|i| (i % 13) as f32 / 7.0).collect();
        let a = RowMatmul::new(&w32, out, inp, Some(b.clone()));
        let c = RowMatmul::from_f16_bits(&bits, out, inp, Some(b.clone()));
        assert!(a.is_f16() && c.is_f16());
        assert_eq!(a.forward(&x, rows), c.forward(&x, rows));
        assert_eq!(a.rows(&[0, 69]), c.rows(&[0, 69]));
        // The embedding lookup unpacks the panel layout: the rows as given.
        let want = [&w32[..inp], &w32[69 * inp..]].concat();
        assert_eq!(c.rows(&[0, 69]), Some(want));
        assert_eq!(c.rows(&[70]), None);
        assert_eq!(c.f16_weights_as_f32().as_deref(), Some(&w32[..]));
        assert_eq!(c.bias(), Some(&b[..]));
        let not_f16 = RowMatmul::new(&[0.1, 0.2], 1, 2, None);
        assert!(not_f16.f16_weights_as_f32().is_none());
        let qa = RowMatmul::quantized(&w32, out, inp, Some(b.clone()));
        let qc = RowMatmul::quantized_f16_bits(&bits, out, inp, Some(b));
        match (&qa.weights, &qc.weights) {
            (
                Storage::Q8 {
                    q: q1, scales: s1, ..
                },
                Storage::Q8 {
                    q: q2, scales: s2, ..
                },
            ) => {
                assert_eq!((q1, s1), (q2, s2));
            }
            _ => panic!("not int8"),
        }
        assert_eq!(qa.forward(&x, rows), qc.forward(&x, rows));
    }

    /// fp16 weights times 1/8 (the decoder's pre-scaled queries), some of them then below
    /// fp16's normal range, stay fp16 with a column scale, and give bit for bit what the same
    /// f32 weights give on the f32 kernel, on every tier.
    #[test]
    fn power_of_two_scaled_fp16_weights_stay_fp16_and_give_the_f32_result() {
        let (out, inp) = (37, 96);
        let (scaled_cols, plain_cols) = (20, 17);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| {
                // Every tenth weight tiny: 1/8 of it is not an fp16 value.
                let v = ((i * 7919 % 1999) as f32 - 999.0) / 512.0;
                let v = if i % 10 == 0 { v / 8192.0 } else { v };
                let v = half::f16::from_f32(v).to_f32();
                if i / inp < scaled_cols {
                    v * 0.125
                } else {
                    v
                }
            })
            .collect();
        assert!(w.iter().any(|&v| half::f16::from_f32(v).to_f32() != v));
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 3.0 * 0.125).collect();
        let mm = RowMatmul::new(&w, out, inp, Some(b.clone()));
        assert!(mm.is_f16());
        let scale = mm.col_scale.as_ref().expect("scaled columns");
        // The smallest power of two that makes each column exact: at most the 8 it was divided by.
        assert!(scale[..scaled_cols]
            .iter()
            .all(|&s| (0.125..1.0).contains(&s)));
        assert_eq!(scale[scaled_cols..], vec![1.0; plain_cols][..]);
        let f32_mm = RowMatmul {
            out,
            inp,
            weights: Storage::F32(w.clone()),
            col_scale: None,
            bias: Some(b),
        };
        for &tier in Tier::available() {
            for rows in [1, 2, 3, 4, 5, 8] {
                let x: Vec<f32> = (0..rows * inp)
                    .map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                assert_eq!(
                    mm.forward_on(tier, &x, rows),
                    f32_mm.forward_on(tier, &x, rows),
                    "{tier:?}, {rows} rows"
                );
            }
        }
        assert_eq!(mm.rows(&[3, 30]), f32_mm.rows(&[3, 30]));
        assert_eq!(mm.f16_weights_as_f32().as_deref(), Some(&w[..]));
    }

    #[test]
    fn zero_rows_give_empty_output() {
        let mm = RowMatmul::new(&[1.0; 8], 2, 4, None);
        assert!(mm.forward(&[], 0).is_empty());
    }
}
