//! candle glue for the bf16 kernels (`whisperd_kernels::bf16`, the encoder under
//! `--precision q8`): a linear layer (where the CPU has AMX) and the encoder's self-attention
//! (AMX, or AVX-512 BF16) as candle ops. `WHISPERD_AMX=0` turns AMX off (for comparisons).

pub use whisperd_kernels::bf16::{amx_available, bf16_available, matmul, Bf16Rows, PackedB};

/// A linear layer `y = x·Wᵀ + b` on AMX, as a candle op over `(…, inp)` f32 inputs.
pub struct Linear {
    weight: PackedB,
    bias: Vec<f32>,
}

impl Linear {
    pub fn new(l: &candle_nn::Linear) -> candle_core::Result<Self> {
        let (out, inp) = l.weight().dims2()?;
        let w = l.weight().flatten_all()?.to_vec1::<f32>()?;
        let bias = match l.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; out],
        };
        Ok(Self {
            weight: PackedB::from_rows(&w, out, inp, inp),
            bias,
        })
    }

    pub fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

fn cpu_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = s else {
        candle_core::bail!("AMX ops take f32 tensors")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("AMX ops take contiguous tensors"),
    }
}

impl candle_core::CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        "whisperd-amx-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = cpu_f32(s, l)?;
        let k = l.dims().last().copied().unwrap_or(0);
        if k != self.weight.k() {
            candle_core::bail!("linear expects {} inputs, got {k}", self.weight.k());
        }
        let m = x.len() / k.max(1);
        let y = whisperd_kernels::bf16::linear(x, m, &self.weight, &self.bias);
        let mut dims = l.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = self.weight.n();
        }
        Ok((candle_core::CpuStorage::F32(y), dims.into()))
    }
}

/// Multi-head self-attention of the encoder on AMX: input the fused `(batch, t, 3·d)` q/k/v
/// projection (q already scaled), output `(batch, t, d)` with heads side by side.
pub struct Attention {
    pub heads: usize,
}

impl candle_core::CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "whisperd-amx-attention"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let qkv = cpu_f32(s, l)?;
        let &[b, t, d3] = l.dims() else {
            candle_core::bail!("attention takes (batch, t, 3d), got {:?}", l.dims())
        };
        let d = d3 / 3;
        if d3 % 3 != 0 || self.heads == 0 || d % self.heads != 0 {
            candle_core::bail!("{d3} values per position do not split into q, k, v heads");
        }
        if !bf16_available() {
            candle_core::bail!("bf16 attention needs AVX-512 BF16 or AMX-BF16");
        }
        let mut y = vec![0f32; b * t * d];
        whisperd_kernels::bf16::attention(qkv, b, t, d, self.heads, &mut y);
        Ok((candle_core::CpuStorage::F32(y), (b, t, d).into()))
    }
}
