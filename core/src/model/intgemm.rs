//! candle glue for the encoder's integer projections (`whisperd_kernels::intgemm`, `--precision
//! q8` on x86 CPUs without AMX).

pub use whisperd_kernels::intgemm::{available, WeightBits};

use candle_core::{Tensor, D};
use candle_nn::Linear;

/// `y = x·Wᵀ + b` with integer weights and activations (see `whisperd_kernels::intgemm`).
pub struct IntLinear(whisperd_kernels::intgemm::IntLinear);

impl IntLinear {
    /// In this CPU's format ([`WeightBits::for_tier`]).
    pub fn new(l: &Linear) -> candle_core::Result<Self> {
        Self::new_as(l, WeightBits::for_tier(whisperd_kernels::isa::Tier::best()))
    }

    pub fn new_as(l: &Linear, bits: WeightBits) -> candle_core::Result<Self> {
        let (out, inp) = l.weight().dims2()?;
        let weight = l.weight().flatten_all()?.to_vec1::<f32>()?;
        let bias = match l.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; out],
        };
        Ok(Self(whisperd_kernels::intgemm::IntLinear::from_rows_as(
            bits, &weight, out, inp, bias,
        )))
    }

    #[cfg(test)]
    pub fn bits(&self) -> WeightBits {
        self.0.bits()
    }

    /// `x` `(rows, inp)` row-major → `(rows, out)`.
    pub fn forward_rows(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        if x.len() != rows * self.0.in_features() {
            candle_core::bail!("projection expects rows of {} inputs", self.0.in_features());
        }
        Ok(self.0.forward(x, rows))
    }

    /// `x` `(…, inp)` f32 on the CPU → `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let inp = x.dim(D::Minus1)?;
        if inp != self.0.in_features() {
            candle_core::bail!(
                "projection expects {} inputs, got {inp}",
                self.0.in_features()
            );
        }
        let rows = x.elem_count() / inp.max(1);
        let y = super::rowmatmul::with_f32(x, |xs| self.0.forward(xs, rows))?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.0.out_features();
        }
        Tensor::from_vec(y, dims, x.device())
    }
}
