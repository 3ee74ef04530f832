//! candle glue for the decoder's row matmuls (`whisperd_kernels::rowmatmul`): building a
//! [`RowMatmul`] from candle tensors and reading f32 tensors without a copy.

pub use whisperd_kernels::rowmatmul::{RowMatmul, Q8_GROUP};

/// [`RowMatmul::quantized`] from candle tensors.
pub fn quantized_from_tensors(
    weight: &candle_core::Tensor,
    bias: Option<&candle_core::Tensor>,
) -> candle_core::Result<RowMatmul> {
    let (out, inp) = weight.dims2()?;
    if inp == 0 || inp % Q8_GROUP != 0 {
        candle_core::bail!("q8 needs inputs in groups of {Q8_GROUP}, got {inp}");
    }
    let b = checked_bias(bias, out)?;
    if let Some(q) = with_f16_bits(weight, |bits| {
        RowMatmul::quantized_f16_bits(bits, out, inp, b.clone())
    }) {
        return Ok(q);
    }
    with_f32(weight, |w| RowMatmul::quantized(w, out, inp, b))
}

/// [`RowMatmul::new`] from a candle `(out, inp)` weight and `(out,)` bias.
pub fn from_tensors(
    weight: &candle_core::Tensor,
    bias: Option<&candle_core::Tensor>,
) -> candle_core::Result<RowMatmul> {
    let (out, inp) = weight.dims2()?;
    if inp == 0 {
        candle_core::bail!("a weight of {out} × 0 inputs");
    }
    let b = checked_bias(bias, out)?;
    // fp16 as stored: no f32 copy of the weights on the way (the token embedding is 53 MB
    // of fp16 in base, 106 MB in f32).
    if let Some(r) = with_f16_bits(weight, |bits| {
        RowMatmul::from_f16_bits(bits, out, inp, b.clone())
    }) {
        return Ok(r);
    }
    with_f32(weight, |w| RowMatmul::new(w, out, inp, b))
}

/// The bias as f32, which must have one value per output (the kernels index it by column).
fn checked_bias(
    bias: Option<&candle_core::Tensor>,
    out: usize,
) -> candle_core::Result<Option<Vec<f32>>> {
    let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    if b.as_ref().is_some_and(|b| b.len() != out) {
        candle_core::bail!("bias length does not match {out} outputs");
    }
    Ok(b)
}

/// Runs `f` on a CPU tensor's values as f32: in place when it is f32 and contiguous, else on
/// one f32 copy.
pub(crate) fn with_f32<T>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> T,
) -> candle_core::Result<T> {
    let t = t.to_dtype(candle_core::DType::F32)?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[a..b]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// Runs `f` on a contiguous CPU fp16 tensor's values in place, as bit patterns; `None` for
/// any other tensor.
pub(crate) fn with_f16_bits<T>(t: &candle_core::Tensor, f: impl FnOnce(&[u16]) -> T) -> Option<T> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F16(data)), Some((a, b))) => {
            use half::slice::HalfFloatSliceExt;
            Some(f(data[a..b].reinterpret_cast()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// A weight without inputs or a bias of the wrong length is an error, not a panic in the
    /// kernels' layout code (zero-sized chunks) or at the first forward (`b[c]`), for f32 and q8.
    #[test]
    fn bad_shapes_are_errors() -> candle_core::Result<()> {
        let cpu = Device::Cpu;
        let empty = Tensor::zeros((8, 0), DType::F32, &cpu)?;
        assert!(from_tensors(&empty, None).is_err());
        assert!(quantized_from_tensors(&empty, None).is_err());
        let w = Tensor::zeros((8, 64), DType::F32, &cpu)?;
        let short = Tensor::zeros(7, DType::F32, &cpu)?;
        assert!(from_tensors(&w, Some(&short)).is_err());
        assert!(quantized_from_tensors(&w, Some(&short)).is_err());
        let bias = Tensor::zeros(8, DType::F32, &cpu)?;
        assert!(from_tensors(&w, Some(&bias)).is_ok());
        assert!(quantized_from_tensors(&w, Some(&bias)).is_ok());
        Ok(())
    }
}
