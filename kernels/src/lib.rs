//! whisperd's CPU kernels: the decoder's row matmuls (`rowmatmul`), the encoder's integer GEMM
//! (`intgemm`) and bf16 products on AMX tiles or AVX-512 BF16 (`bf16`), the fused encoder attention (`attention`), the
//! decoder's attention over its caches (`query`), and exp / softmax / GELU (`elementwise`).
//!
//! Slices in, slices out: no candle types. The candle glue (custom ops, tensor wrappers) is in
//! whisperd's `core/src/model`. The instruction set is detected once (`isa`); kernels that need
//! explicit vectors are written once for every width on `simd`.

#[macro_use]
pub mod isa;
pub mod attention;
pub mod bf16;
pub mod elementwise;
pub mod intgemm;
pub mod par;
pub mod query;
pub mod rowmatmul;
mod simd;

pub use elementwise::{log_sum_exp, max_value};

#[cfg(test)]
mod harness;

/// Deterministic test data: `n` values in [−0.5, 0.5) from an xorshift sequence started at
/// `seed | 1` (kernel tests; different odd starts give unrelated sequences).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
