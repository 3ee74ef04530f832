//! bf16 products, for the encoder under `--precision q8`: on Intel AMX tiles, or with AVX-512 BF16.
//!
//! One encoder window is ~37 GFLOP of 1500-row matmuls; in f32 (candle's AVX-512 GEMM) that is
//! ~190 ms on two cores and the floor of every request's latency. AMX multiplies 16×32 bf16 by
//! 32×16 bf16 into 16×16 f32 per instruction, several times the f32 FMA rate. Inputs are rounded
//! to bf16 (8-bit mantissa), sums stay f32: lossy like the int8 decoder weights of q8, so it is
//! used only when the user chose q8, and only where the CPU has AMX-BF16 and the kernel grants
//! the tile state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`). Anything else falls back to f32.
//!
//! Operands: `A` (m × k) is converted per call to bf16 rows padded to 32 × 32 blocks;
//! `B` (k × n) is packed once (weights) or per call (attention keys/values) into the tile layout
//! AMX reads (pairs of consecutive k interleaved per column, "VNNI" order). The product is
//! computed in 32 × 32 blocks held in four accumulator tiles.
//! `WHISPERD_AMX=0` turns it off (for comparisons).
//!
//! CPUs with AVX-512 BF16 but no AMX (AMD Zen 4, Intel Cooper Lake) multiply the same operands,
//! in the same layout, with `vdpbf16ps` (16 columns × one pair of k per instruction): the q8
//! encoder's attention runs here on them ([`attention_on`]), so every bf16 tier computes it
//! alike. Its projections stay on the integer kernels there (`intgemm`: exact integer sums of
//! 8-bit weights and activations, at twice the products per instruction of `vdpbf16ps`).

use rayon::prelude::*;

use crate::isa::Tier;

const BLOCK: usize = 32;
/// u16 per packed B tile: 16 rows (pairs of k) × 16 columns × 2.
const TILE_U16: usize = 512;

/// Whether AMX-BF16 is usable in this process ([`Tier::Amx`], detected and requested once).
pub fn amx_available() -> bool {
    Tier::Amx.is_available()
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// f32 → bf16 with round-to-nearest-even (finite inputs).
#[inline(always)]
pub fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `dst[i] = bf16(src[i])`: the CPU's own conversion on [`Tier::Avx512Bf16`] and up (every AMX
/// CPU has it), else the scalar rounding of [`bf16`] (only reached by tests on other CPUs:
/// `Bf16Rows` feed AMX tiles).
pub fn to_bf16_on(tier: Tier, src: &[f32], dst: &mut [u16]) {
    #[inline(always)]
    fn generic(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16(s);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// Same rounding (to nearest even) for normal values (denormals become zero, far below
        /// what bf16 activations carry), one instruction per 16.
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn native(src: &[f32], dst: &mut [u16]) {
            use std::arch::x86_64::*;
            let n = src.len().min(dst.len());
            let (src, dst) = (&src[..n], &mut dst[..n]);
            let mut chunks = dst.chunks_exact_mut(16).zip(src.chunks_exact(16));
            for (d, s) in &mut chunks {
                // SAFETY: both chunks are exactly 16 elements: one 64-byte load, one 32-byte store.
                unsafe {
                    let b: __m256i =
                        std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr())));
                    _mm256_storeu_si256(d.as_mut_ptr().cast(), b);
                }
            }
            let done = n / 16 * 16;
            generic(&src[done..], &mut dst[done..]);
        }
        if tier >= Tier::Avx512Bf16 {
            // SAFETY: `tier` is available (the caller's contract): the CPU has the features
            // `native` is compiled for.
            return unsafe { native(src, dst) };
        }
    }
    let _ = tier;
    generic(src, dst)
}

/// The left operand: `m` rows of `k` values in bf16, zero-padded to whole 32 × 32 blocks.
pub struct Bf16Rows {
    data: Vec<u16>,
    m: usize,
    m_pad: usize,
    k_pad: usize,
}

impl Bf16Rows {
    /// All zeros, `m` rows of `k`: filled later through [`Bf16Rows::rows_mut`].
    pub fn zeros(m: usize, k: usize) -> Self {
        let (m_pad, k_pad) = (round_up(m.max(1), BLOCK), round_up(k.max(1), BLOCK));
        Self {
            data: vec![0; m_pad * k_pad],
            m,
            m_pad,
            k_pad,
        }
    }

    /// The bf16 rows (stride [`Bf16Rows::stride`]); only the first `k` of each row may be
    /// written, the padding must stay zero.
    pub fn rows_mut(&mut self) -> &mut [u16] {
        &mut self.data[..self.m * self.k_pad]
    }

    pub fn stride(&self) -> usize {
        self.k_pad
    }

    /// Row `i` of `A` is `a[i * lda ..][.. k]`.
    pub fn new(a: &[f32], m: usize, k: usize, lda: usize) -> Self {
        let (m_pad, k_pad) = (round_up(m.max(1), BLOCK), round_up(k.max(1), BLOCK));
        let tier = Tier::best();
        let mut data = vec![0u16; m_pad * k_pad];
        let fill = |(i, row): (usize, &mut [u16])| {
            if i < m {
                to_bf16_on(tier, &a[i * lda..][..k], &mut row[..k]);
            }
        };
        if m * k >= 1 << 16 {
            data.par_chunks_mut(k_pad).enumerate().for_each(fill);
        } else {
            data.chunks_mut(k_pad).enumerate().for_each(fill);
        }
        Self {
            data,
            m,
            m_pad,
            k_pad,
        }
    }
}

/// The right operand `B` (k × n) in AMX tile order: for each 16 columns and 32 values of k a
/// 16 × 32 tile whose row `r` holds `(B[2r][j], B[2r+1][j])` for the 16 columns `j`.
pub struct PackedB {
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    tiles: Vec<u16>, // read by the tile loads (x86-64 Linux)
    k: usize,
    n: usize,
    k_pad: usize,
    n_pad: usize,
}

impl PackedB {
    /// `B = Wᵀ` for a weight (or key) matrix `W` of `n` rows of `k`: `W[j][i] = w[j * ldw + i]`.
    pub fn from_rows(w: &[f32], n: usize, k: usize, ldw: usize) -> Self {
        // Row j of W is column j of B: its values, in pairs, go down slot j % 16 of the
        // column's tiles (one tile row per pair).
        Self::pack(k, n, |nb, cols, col_tiles| {
            for jj in 0..cols {
                let row = &w[(nb * 16 + jj) * ldw..][..k];
                for (p, pair) in row.chunks(2).enumerate() {
                    let at = (p / 16) * TILE_U16 + (p % 16) * 32 + 2 * jj;
                    col_tiles[at] = bf16(pair[0]);
                    if let Some(&odd) = pair.get(1) {
                        col_tiles[at + 1] = bf16(odd);
                    }
                }
            }
        })
    }

    /// `B` itself, `k` rows of `n` (values of attention): `B[i][j] = b[i * ldb + j]`.
    pub fn from_cols(b: &[f32], k: usize, n: usize, ldb: usize) -> Self {
        // Row by row (contiguous reads): row i of B fills every other slot of one tile row.
        Self::pack(k, n, |nb, cols, col_tiles| {
            for i in 0..k {
                let src = &b[i * ldb + nb * 16..][..cols];
                let base = (i / BLOCK) * TILE_U16 + (i % BLOCK / 2) * 32 + i % 2;
                for (jj, &v) in src.iter().enumerate() {
                    col_tiles[base + 2 * jj] = bf16(v);
                }
            }
        })
    }

    /// Tile layout: column j, k index i goes to tile (j / 16, i / 32), row (i % 32) / 2,
    /// slot 2·(j % 16) + i % 2. `fill(nb, cols, tiles)` writes columns `16·nb ..` (`cols` of
    /// them, 16 but at the end) into the tiles of column block `nb`; padding stays zero.
    fn pack(k: usize, n: usize, fill: impl Fn(usize, usize, &mut [u16]) + Sync) -> Self {
        let (k_pad, n_pad) = (round_up(k.max(1), BLOCK), round_up(n.max(1), BLOCK));
        let kb = k_pad / BLOCK;
        let mut tiles = vec![0u16; (n_pad / 16) * kb * TILE_U16];
        tiles
            .par_chunks_mut(kb * TILE_U16)
            .enumerate()
            .for_each(|(nb, col_tiles)| {
                let cols = 16.min(n.saturating_sub(nb * 16));
                if cols > 0 {
                    fill(nb, cols, col_tiles);
                }
            });
        Self {
            tiles,
            k,
            n,
            k_pad,
            n_pad,
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn n_pad(&self) -> usize {
        self.n_pad
    }
}

/// Whether this CPU multiplies bf16 operands ([`Tier::Avx512Bf16`] and up: AMX tiles where
/// granted, else AVX-512 BF16).
pub fn bf16_available() -> bool {
    Tier::best() >= Tier::Avx512Bf16
}

/// One 32-row block of `A · B` on `tier`'s kernel.
///
/// # Safety
/// `tier` is available and at least [`Tier::Avx512Bf16`]; `rows` points to 32 writable rows of
/// `b.n_pad` values (block `mb` of the output); they need not be initialized.
unsafe fn block_row_on(tier: Tier, a: &Bf16Rows, mb: usize, b: &PackedB, rows: *mut f32) {
    assert_eq!(a.k_pad, b.k_pad, "inner dimensions differ");
    if tier >= Tier::Amx {
        return imp::block_row(a, mb, b, rows);
    }
    #[cfg(target_arch = "x86_64")]
    if tier >= Tier::Avx512Bf16 {
        return avx512::block_row(a, mb, b, rows);
    }
    unreachable!("bf16 products need Avx512Bf16 or Amx, not {tier:?}")
}

/// `A · B` as `(m, n_pad)` f32, row stride `n_pad` (columns ≥ n are zero: padding).
/// The caller checks [`available`] first.
pub fn matmul_padded(a: &Bf16Rows, b: &PackedB) -> Vec<f32> {
    matmul_padded_on(Tier::best(), a, b)
}

fn matmul_padded_on(tier: Tier, a: &Bf16Rows, b: &PackedB) -> Vec<f32> {
    assert!(
        tier >= Tier::Avx512Bf16 && tier.is_available(),
        "bf16 products need Avx512Bf16 or Amx, not {tier:?}"
    );
    assert_eq!(a.k_pad, b.k_pad, "inner dimensions differ");
    let n_pad = b.n_pad;
    let len = a.m_pad * n_pad;
    // Written in place of zero-filling first: the tile stores cover every element, and a
    // zero fill of the up to 9 MB output was a single-threaded memset per linear layer.
    let mut c: Vec<f32> = Vec::with_capacity(len);
    c.spare_capacity_mut()[..len]
        .par_chunks_mut(BLOCK * n_pad)
        .enumerate()
        .for_each(|(mb, rows)| {
            // SAFETY: `tier` is available (asserted above); `rows` is block `mb` of `c`: 32
            // rows of `n_pad` (sizes set above).
            unsafe { block_row_on(tier, a, mb, b, rows.as_mut_ptr().cast()) }
        });
    // SAFETY: `block_row` stored all 32 × n_pad values of every block, so all `len` are set.
    unsafe { c.set_len(len) };
    c.truncate(a.m * n_pad);
    c
}

/// `A · B` as `(m, n)` (drops padding columns when n is not a multiple of 32).
pub fn matmul(a: &Bf16Rows, b: &PackedB) -> Vec<f32> {
    matmul_on(Tier::best(), a, b)
}

fn matmul_on(tier: Tier, a: &Bf16Rows, b: &PackedB) -> Vec<f32> {
    let c = matmul_padded_on(tier, a, b);
    if b.n == b.n_pad {
        return c;
    }
    let mut out = Vec::with_capacity(a.m * b.n);
    for row in c.chunks(b.n_pad) {
        out.extend_from_slice(&row[..b.n]);
    }
    out
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{Bf16Rows, PackedB, BLOCK, TILE_U16};
    use std::arch::asm;

    /// Palette 1, eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    /// One 32-row block of `C` (`rows`, stride `n_pad`): for every 32 columns, four accumulator
    /// tiles (tmm0–3) over all of k, with A in tmm4/5 and B in tmm6/7.
    ///
    /// # Safety
    /// Tiles are permitted ([`Tier::Amx`] is available); `rows` points to 32 writable rows of
    /// `b.n_pad` values (block `mb` of the output); they need not be initialized.
    pub unsafe fn block_row(a: &Bf16Rows, mb: usize, b: &PackedB, rows: *mut f32) {
        let kb = a.k_pad / BLOCK;
        let lda = a.k_pad * 2;
        let ldc = b.n_pad * 4;
        let a0 = a.data.as_ptr().add(mb * BLOCK * a.k_pad);
        let a1 = a0.add(16 * a.k_pad);
        let c = rows;
        // Only whole blocks reach here except the last, whose padding rows were allocated too
        // (`c` has m_pad rows before truncation).
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for nb in 0..b.n_pad / BLOCK {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let b0 = b.tiles.as_ptr().add(2 * nb * kb * TILE_U16);
            let b1 = b0.add(kb * TILE_U16);
            for kk in 0..kb {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kk * BLOCK),
                    a1 = in(reg) a1.add(kk * BLOCK),
                    b0 = in(reg) b0.add(kk * TILE_U16),
                    b1 = in(reg) b1.add(kk * TILE_U16),
                    lda = in(reg) lda,
                    ldb = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            let c0 = c.add(nb * BLOCK);
            let c1 = c0.add(16 * b.n_pad);
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c0b} + {ldc}*1], tmm1",
                "tilestored [{c1} + {ldc}*1], tmm2",
                "tilestored [{c1b} + {ldc}*1], tmm3",
                c0 = in(reg) c0,
                c0b = in(reg) c0.add(16),
                c1 = in(reg) c1,
                c1b = in(reg) c1.add(16),
                ldc = in(reg) ldc,
                options(nostack)
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The same products with AVX-512 BF16 dot products, on the AMX operand layout: a packed
/// column group (16 columns) is `k_pad / 2` rows of 16 bf16 pairs, contiguous, each row one
/// `vdpbf16ps` operand against a broadcast pair of `A`'s row.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Bf16Rows, PackedB, BLOCK};
    use std::arch::x86_64::*;

    /// Register tile: 8 rows × 2 groups of 16 columns (one 32-column block): 16 accumulators,
    /// 2 column vectors and a broadcast of AVX-512's 32 registers.
    const R: usize = 8;
    const C: usize = 2;

    /// One 32-row block of `C` (`rows`, stride `n_pad`), as [`super::imp::block_row`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `rows` points to 32 writable rows of `b.n_pad` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn block_row(a: &Bf16Rows, mb: usize, b: &PackedB, rows: *mut f32) {
        let pairs = a.k_pad / 2;
        // u16 per packed group of 16 columns.
        let group = a.k_pad * 16;
        for nb in 0..b.n_pad / BLOCK {
            let cols = b.tiles.as_ptr().add(2 * nb * group);
            for r0 in (0..BLOCK).step_by(R) {
                // Pairs of bf16 of the tile's rows (every block row exists: `m_pad` rows).
                let a_pairs = a.data.as_ptr().add((mb * BLOCK + r0) * a.k_pad) as *const i32;
                let mut acc = [[_mm512_setzero_ps(); C]; R];
                for p in 0..pairs {
                    let mut bv = [_mm512_setzero_si512(); C];
                    for c in 0..C {
                        bv[c] = _mm512_loadu_si512(cols.add(c * group + p * 32).cast());
                    }
                    for r in 0..R {
                        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            a_pairs.add(r * pairs + p).read_unaligned(),
                        ));
                        for c in 0..C {
                            let bh: __m512bh = std::mem::transmute(bv[c]);
                            acc[r][c] = _mm512_dpbf16_ps(acc[r][c], av, bh);
                        }
                    }
                }
                for r in 0..R {
                    for c in 0..C {
                        _mm512_storeu_ps(
                            rows.add((r0 + r) * b.n_pad + nb * BLOCK + c * 16),
                            acc[r][c],
                        );
                    }
                }
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::{Bf16Rows, PackedB};
    pub unsafe fn block_row(_: &Bf16Rows, _: usize, _: &PackedB, _: *mut f32) {
        unreachable!("AMX is never reported available here")
    }
}

impl PackedB {
    /// The inner dimension (rows of `B`).
    pub fn k(&self) -> usize {
        self.k
    }
}

/// `y = x·Wᵀ + b` for `m` rows of `x` (`(m, k)`, k = `weight.k()`): `weight` is `W` packed by
/// [`PackedB::from_rows`], `bias` has `weight.n()` values. The caller checks [`available`] first.
pub fn linear(x: &[f32], m: usize, weight: &PackedB, bias: &[f32]) -> Vec<f32> {
    let k = weight.k;
    let mut y = matmul(&Bf16Rows::new(x, m, k, k), weight);
    let n = weight.n;
    y.par_chunks_mut(n)
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
    y
}

/// Multi-head self-attention of the encoder in bf16: `qkv` is the fused `(b, t, 3·d)` q/k/v
/// projection (q already scaled), `y` the `(b, t, d)` output with heads side by side; `heads`
/// divides `d`. The caller checks [`bf16_available`] first.
pub fn attention(qkv: &[f32], b: usize, t: usize, d: usize, heads: usize, y: &mut [f32]) {
    attention_on(Tier::best(), qkv, b, t, d, heads, y)
}

/// [`attention`] on `tier`'s products (AMX tiles or AVX-512 BF16).
pub fn attention_on(
    tier: Tier,
    qkv: &[f32],
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    y: &mut [f32],
) {
    assert!(
        tier >= Tier::Avx512Bf16 && tier.is_available(),
        "bf16 attention needs Avx512Bf16 or Amx, not {tier:?}"
    );
    assert!(
        heads > 0 && d.is_multiple_of(heads),
        "{d} values do not split into {heads} heads"
    );
    assert!(
        qkv.len() >= b * t * 3 * d && y.len() >= b * t * d,
        "attention operands too short"
    );
    let d3 = 3 * d;
    let dh = d / heads;
    let blocks = t.div_ceil(BLOCK);
    for (w, y) in y.chunks_mut(t * d).enumerate().take(b) {
        let base = &qkv[w * t * d3..][..t * d3];
        // Every head's operands in bf16 / tile order (each packing is itself threaded).
        let packed: Vec<(Bf16Rows, PackedB, PackedB)> = (0..heads)
            .into_par_iter()
            .map(|h| {
                (
                    Bf16Rows::new(&base[h * dh..], t, dh, d3),
                    PackedB::from_rows(&base[d + h * dh..], t, dh, d3),
                    PackedB::from_cols(&base[2 * d + h * dh..], t, dh, d3),
                )
            })
            .collect();
        // One task per (head, 32 query rows): its scores (32 × t f32), probabilities and
        // output stay in that core's cache instead of a (t × t) matrix per head going
        // through memory three times; 6 heads × 47 blocks also keep both cores busy.
        let outs: Vec<Vec<f32>> = (0..heads * blocks)
            .into_par_iter()
            .map_init(
                || (Vec::new(), Bf16Rows::zeros(BLOCK, t)),
                |(scores, probs), task| {
                    let (h, mb) = (task / blocks, task % blocks);
                    let (q, keys, values) = &packed[h];
                    let rows = BLOCK.min(t - mb * BLOCK);
                    scores.resize(BLOCK * keys.n_pad, 0.0);
                    // SAFETY: `tier` is available (asserted above); `scores` is one 32-row
                    // block of q·kᵀ.
                    unsafe { block_row_on(tier, q, mb, keys, scores.as_mut_ptr()) };
                    let stride = probs.stride();
                    let mut inv_sums = [0f32; BLOCK];
                    crate::elementwise::exp_to_bf16_on(
                        tier,
                        scores,
                        keys.n_pad,
                        t,
                        probs.rows_mut(),
                        stride,
                        &mut inv_sums[..rows],
                    );
                    // Rows past `rows` of a last, partial block hold an earlier task's
                    // values: their outputs are computed and dropped.
                    let mut out = vec![0f32; BLOCK * values.n_pad];
                    // SAFETY: as above; `out` is one 32-row block of e·v.
                    unsafe { block_row_on(tier, probs, 0, values, out.as_mut_ptr()) };
                    out.truncate(rows * values.n_pad);
                    // The softmax's normalization, applied to the product (see `exp_to_bf16`).
                    for (row, inv) in out.chunks_mut(values.n_pad).zip(inv_sums) {
                        row.iter_mut().for_each(|v| *v *= inv);
                    }
                    out
                },
            )
            .collect();
        let ld = dh.div_ceil(BLOCK) * BLOCK;
        y.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            for (h, dst) in row.chunks_mut(dh).enumerate() {
                let block = &outs[h * blocks + i / BLOCK];
                dst.copy_from_slice(&block[(i % BLOCK) * ld..][..dh]);
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_values as rand_vec;

    /// Both operand layouts and shapes that are not multiples of 32, against f64 on the same
    /// bf16-rounded inputs (so the only difference is f32 accumulation order).
    /// (harness: AMX tiles and AVX-512 BF16)
    pub(crate) fn tiles(tier: Tier) {
        let r = |v: f32| f32::from_bits((bf16(v) as u32) << 16);
        // Odd k and n that are not multiples of 16 exercise the packing's padding.
        for (m, k, n) in [(1500, 64, 1500), (37, 384, 1152), (5, 50, 17), (33, 51, 20)] {
            let a = rand_vec(m * k, 1);
            let w = rand_vec(n * k, 2);
            let got_rows = matmul_on(
                tier,
                &Bf16Rows::new(&a, m, k, k),
                &PackedB::from_rows(&w, n, k, k),
            );
            // The same B given as (k × n).
            let mut wt = vec![0f32; k * n];
            for j in 0..n {
                for i in 0..k {
                    wt[i * n + j] = w[j * k + i];
                }
            }
            let got_cols = matmul_on(
                tier,
                &Bf16Rows::new(&a, m, k, k),
                &PackedB::from_cols(&wt, k, n, n),
            );
            assert_eq!(got_rows.len(), m * n);
            // Every entry of the small products; corners and a middle one of the large.
            let points: Vec<(usize, usize)> = if m * n <= 5000 {
                (0..m).flat_map(|i| (0..n).map(move |j| (i, j))).collect()
            } else {
                vec![
                    (0, 0),
                    (m - 1, n - 1),
                    (m / 2, n / 3),
                    (m - 1, 0),
                    (0, n - 1),
                ]
            };
            for (i, j) in points {
                let want: f64 = (0..k)
                    .map(|t| r(a[i * k + t]) as f64 * r(w[j * k + t]) as f64)
                    .sum();
                for got in [got_rows[i * n + j], got_cols[i * n + j]] {
                    assert!(
                        (got as f64 - want).abs() < 1e-4 * (k as f64).sqrt(),
                        "({m},{k},{n}) at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The row conversion rounds exactly like `bf16`, tail included (harness).
    pub(crate) fn row_conversion(tier: Tier) {
        let src: Vec<f32> = rand_vec(1000, 9)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 << (i % 20)) as f32 + 1.0 / 512.0)
            .collect();
        for n in [0, 5, 16, 37, 1000] {
            let mut dst = vec![0u16; n];
            to_bf16_on(tier, &src[..n], &mut dst);
            for (i, (&d, &s)) in dst.iter().zip(&src).enumerate() {
                assert_eq!(d, bf16(s), "n={n} at {i}: {s}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.0), 0xc000);
    }
}
