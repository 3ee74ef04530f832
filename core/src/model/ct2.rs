//! Reader for CTranslate2's `model.bin` (see ../shared/README.md for the format): fp32, fp16,
//! bf16 and int8 (per-row `weight_scale`) variables, renamed to Hugging Face names, fused
//! projections split apart.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::weights::{Layout, Weights};
use super::ModelError;

/// One variable as read: its shape, and floats as a tensor in their stored type (fp32, fp16,
/// bf16), anything else (int8 weights, integer scalars) as its dtype code and raw bytes.
struct RawVar {
    dims: Vec<usize>,
    value: Value,
}

enum Value {
    Float(Tensor),
    Raw { dtype: u8, data: Vec<u8> },
}

/// The file read front to back (no map of it: a mapped file counts in the process's memory
/// while its pages are read, beside the tensors made from them).
struct Reader<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Reader<R> {
    /// The next `n` bytes into `buf` (replacing what it held). A short file is an error, found
    /// without allocating the `n` bytes a damaged header may claim.
    fn take_into(&mut self, n: usize, buf: &mut Vec<u8>) -> Result<(), String> {
        buf.clear();
        let got = (&mut self.r)
            .take(n as u64)
            .read_to_end(buf)
            .map_err(|e| format!("cannot read at byte {}: {e}", self.pos))?;
        self.pos += got as u64;
        if got < n {
            return Err(format!(
                "file ends at byte {} while {} more bytes were expected (truncated download?)",
                self.pos,
                n - got
            ));
        }
        Ok(())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = Vec::with_capacity(N);
        self.take_into(N, &mut b)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let mut b = Vec::with_capacity(n);
        self.take_into(n, &mut b)?;
        if b.last() == Some(&0) {
            b.pop();
        }
        String::from_utf8(b).map_err(|_| "a name is not UTF-8".to_string())
    }
}

fn elem_size(dtype: u8) -> Option<usize> {
    match dtype {
        0 | 3 => Some(4),
        1 => Some(1),
        2 | 4 | 5 => Some(2),
        _ => None,
    }
}

/// Variables by name, and aliases (alias → target).
type Parsed = (HashMap<String, RawVar>, HashMap<String, String>);

/// Read the variable table and every variable: each float variable becomes a tensor as it is
/// read, through one reused buffer, so reading holds the weights once.
fn parse(r: impl Read, device: &Device) -> Result<Parsed, String> {
    let mut r = Reader { r, pos: 0 };
    let version = r.u32()?;
    if !(5..=6).contains(&version) {
        return Err(format!(
            "unsupported CTranslate2 model version {version} (expected 5 or 6)"
        ));
    }
    let spec = r.string()?;
    if spec != "WhisperSpec" {
        return Err(format!("this is a `{spec}` model, not Whisper"));
    }
    let _revision = r.u32()?;
    let n = r.u32()? as usize;
    let mut vars = HashMap::new();
    let mut buf = Vec::new();
    for _ in 0..n {
        let name = r.string()?;
        let rank = r.u8()? as usize;
        let dims = (0..rank)
            .map(|_| r.u32().map(|d| d as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = r.u8()?;
        let n_bytes = r.u32()? as usize;
        let size =
            elem_size(dtype).ok_or_else(|| format!("`{name}` has unknown dtype code {dtype}"))?;
        let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count.and_then(|c| c.checked_mul(size)) != Some(n_bytes) {
            return Err(format!(
                "`{name}`: {n_bytes} bytes do not hold shape {dims:?}"
            ));
        }
        r.take_into(n_bytes, &mut buf)?;
        let float = match dtype {
            0 => Some(DType::F32),
            4 => Some(DType::F16),
            5 => Some(DType::BF16),
            _ => None,
        };
        let value = match float {
            Some(dt) => Value::Float(
                Tensor::from_raw_buffer(&buf, dt, &dims, device)
                    .map_err(|e| format!("`{name}`: {e}"))?,
            ),
            None => Value::Raw {
                dtype,
                data: std::mem::take(&mut buf),
            },
        };
        vars.insert(name, RawVar { dims, value });
    }
    let mut aliases = HashMap::new();
    if let Ok(n_alias) = r.u32() {
        for _ in 0..n_alias {
            let alias = r.string()?;
            let target = r.string()?;
            aliases.insert(alias, target);
        }
    }
    Ok((vars, aliases))
}

/// A variable's values as f32.
fn values_f32(v: &RawVar) -> Result<Vec<f32>, String> {
    match &v.value {
        Value::Float(t) => t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| e.to_string()),
        Value::Raw { dtype, data } => Ok(to_f32(*dtype, data)),
    }
}

fn to_f32(dtype: u8, d: &[u8]) -> Vec<f32> {
    match dtype {
        0 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        1 => d.iter().map(|&b| b as i8 as f32).collect(),
        2 => d
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
            .collect(),
        3 => d
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        4 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// int8 → f32: each output row is divided by its scale (`w = q / scale`).
fn dequantize_rows(data: &mut [f32], scales: &[f32]) {
    let cols = data.len() / scales.len().max(1);
    for (row, s) in data.chunks_exact_mut(cols.max(1)).zip(scales) {
        row.iter_mut().for_each(|x| *x /= s);
    }
}

fn scalar(vars: &HashMap<String, RawVar>, name: &str) -> Option<usize> {
    vars.get(name)
        .filter(|v| v.dims.is_empty())
        .and_then(|v| values_f32(v).ok()?.first().map(|&x| x as usize))
}

/// Load `model.bin` into Hugging Face-named tensors: floats as stored, int8 dequantized to f32.
pub fn load(path: &Path, device: &Device) -> Result<Weights, ModelError> {
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let fmt = |msg: String| ModelError::Format {
        path: path.into(),
        msg,
    };
    let (vars, aliases) = parse(std::io::BufReader::new(file), device).map_err(fmt)?;

    let resolve = |name: &str| -> Option<&RawVar> {
        vars.get(name)
            .or_else(|| aliases.get(name).and_then(|t| vars.get(t)))
    };
    // Dequantize int8 weights: w = q / scale, one scale per output row.
    let tensor = |name: &str| -> Result<Tensor, ModelError> {
        let v = resolve(name).ok_or_else(|| ModelError::MissingTensor {
            path: path.into(),
            name: name.into(),
        })?;
        // Floats stay as stored (converted to f32 when the network takes them).
        let (dtype, raw) = match &v.value {
            Value::Float(t) => return Ok(t.clone()),
            Value::Raw { dtype, data } => (*dtype, data),
        };
        let mut data = to_f32(dtype, raw);
        if dtype == 1 {
            let scale_name = format!("{name}_scale");
            let s = resolve(&scale_name).ok_or_else(|| ModelError::MissingTensor {
                path: path.into(),
                name: scale_name.clone(),
            })?;
            let scales = values_f32(s).map_err(fmt)?;
            let rows = v.dims.first().copied().unwrap_or(1);
            if scales.len() != rows || rows == 0 {
                return Err(fmt(format!(
                    "`{scale_name}` has {} values for {rows} rows",
                    scales.len()
                )));
            }
            dequantize_rows(&mut data, &scales);
        }
        Ok(Tensor::from_vec(data, v.dims.clone(), device)?)
    };

    let mut t: HashMap<String, Tensor> = HashMap::new();
    let put_linear =
        |t: &mut HashMap<String, Tensor>, src: &str, dst: &str| -> Result<(), ModelError> {
            t.insert(format!("{dst}.weight"), tensor(&format!("{src}/weight"))?);
            if resolve(&format!("{src}/bias")).is_some() {
                t.insert(format!("{dst}.bias"), tensor(&format!("{src}/bias"))?);
            }
            Ok(())
        };
    let put_norm =
        |t: &mut HashMap<String, Tensor>, src: &str, dst: &str| -> Result<(), ModelError> {
            t.insert(format!("{dst}.weight"), tensor(&format!("{src}/gamma"))?);
            t.insert(format!("{dst}.bias"), tensor(&format!("{src}/beta"))?);
            Ok(())
        };
    // Split a fused projection's rows into parts (q,k,v or k,v); the key part has no bias in HF.
    let split =
        |t: &mut HashMap<String, Tensor>, src: &str, dsts: &[&str]| -> Result<(), ModelError> {
            let w = tensor(&format!("{src}/weight"))?;
            let b = tensor(&format!("{src}/bias")).ok();
            let n = dsts.len();
            let rows = w.dims()[0];
            if rows % n != 0 {
                return Err(fmt(format!(
                    "`{src}/weight` has {rows} rows, not divisible into {n} projections"
                )));
            }
            let part = rows / n;
            for (i, dst) in dsts.iter().enumerate() {
                t.insert(
                    format!("{dst}.weight"),
                    w.narrow(0, i * part, part)?.contiguous()?,
                );
                if let Some(b) = &b {
                    if !dst.ends_with("k_proj") {
                        t.insert(
                            format!("{dst}.bias"),
                            b.narrow(0, i * part, part)?.contiguous()?,
                        );
                    }
                }
            }
            Ok(())
        };

    for side in ["encoder", "decoder"] {
        t.insert(
            format!("{side}.embed_positions.weight"),
            tensor(&format!("{side}/position_encodings/encodings"))?,
        );
        put_norm(
            &mut t,
            &format!("{side}/layer_norm"),
            &format!("{side}.layer_norm"),
        )?;
        let n_layers = (0..)
            .take_while(|i| resolve(&format!("{side}/layer_{i}/ffn/linear_0/weight")).is_some())
            .count();
        for i in 0..n_layers {
            let s = format!("{side}/layer_{i}");
            let d = format!("{side}.layers.{i}");
            split(
                &mut t,
                &format!("{s}/self_attention/linear_0"),
                &[
                    &format!("{d}.self_attn.q_proj"),
                    &format!("{d}.self_attn.k_proj"),
                    &format!("{d}.self_attn.v_proj"),
                ],
            )?;
            put_linear(
                &mut t,
                &format!("{s}/self_attention/linear_1"),
                &format!("{d}.self_attn.out_proj"),
            )?;
            put_norm(
                &mut t,
                &format!("{s}/self_attention/layer_norm"),
                &format!("{d}.self_attn_layer_norm"),
            )?;
            if side == "decoder" {
                put_linear(
                    &mut t,
                    &format!("{s}/attention/linear_0"),
                    &format!("{d}.encoder_attn.q_proj"),
                )?;
                split(
                    &mut t,
                    &format!("{s}/attention/linear_1"),
                    &[
                        &format!("{d}.encoder_attn.k_proj"),
                        &format!("{d}.encoder_attn.v_proj"),
                    ],
                )?;
                put_linear(
                    &mut t,
                    &format!("{s}/attention/linear_2"),
                    &format!("{d}.encoder_attn.out_proj"),
                )?;
                put_norm(
                    &mut t,
                    &format!("{s}/attention/layer_norm"),
                    &format!("{d}.encoder_attn_layer_norm"),
                )?;
            }
            put_linear(&mut t, &format!("{s}/ffn/linear_0"), &format!("{d}.fc1"))?;
            put_linear(&mut t, &format!("{s}/ffn/linear_1"), &format!("{d}.fc2"))?;
            put_norm(
                &mut t,
                &format!("{s}/ffn/layer_norm"),
                &format!("{d}.final_layer_norm"),
            )?;
        }
    }
    for conv in ["conv1", "conv2"] {
        put_linear(
            &mut t,
            &format!("encoder/{conv}"),
            &format!("encoder.{conv}"),
        )?;
    }
    t.insert(
        "decoder.embed_tokens.weight".into(),
        tensor("decoder/embeddings/weight")?,
    );

    Ok(Weights::new(
        Layout::Ct2,
        path.to_path_buf(),
        t,
        scalar(&vars, "encoder/num_heads"),
        scalar(&vars, "decoder/num_heads"),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialize variables in CTranslate2's format (for tests of the reader).
    pub fn write_ct2(vars: &[(&str, Vec<usize>, u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, dims, dtype, data) in vars {
            string(&mut out, name);
            out.push(dims.len() as u8);
            for d in dims {
                out.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            out.push(*dtype);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn int8_rows_are_divided_by_their_scale() {
        let q: Vec<u8> = [10i8, -20, 30, 40].iter().map(|&x| x as u8).collect();
        let scale: Vec<u8> = [2.0f32, 10.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let buf = write_ct2(&[
            ("w/weight", vec![2, 2], 1, q),
            ("w/weight_scale", vec![2], 0, scale),
        ]);
        let (vars, _) = parse(&buf[..], &Device::Cpu).unwrap();
        let v = &vars["w/weight"];
        assert_eq!(v.dims, vec![2, 2]);
        let mut w = values_f32(v).unwrap();
        assert_eq!(w, vec![10.0, -20.0, 30.0, 40.0]);
        dequantize_rows(&mut w, &values_f32(&vars["w/weight_scale"]).unwrap());
        assert_eq!(w, vec![5.0, -10.0, 3.0, 4.0]);
    }

    #[test]
    fn truncated_file_is_reported() {
        let data: Vec<u8> = vec![0; 16];
        let mut buf = write_ct2(&[("w/weight", vec![2, 2], 0, data)]);
        buf.truncate(buf.len() - 10);
        let err = parse(&buf[..], &Device::Cpu).err().unwrap();
        assert!(err.contains("truncated"), "{err}");
    }
}
