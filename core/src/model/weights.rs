//! One map of f32 tensors under Hugging Face names (without the `model.` prefix), whatever the
//! layout on disk, plus the few facts the files carry beside the tensors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{ModelDims, ModelError};

/// Which on-disk layout a model directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// CTranslate2 `model.bin` (as faster-whisper ships Whisper).
    Ct2,
    /// Hugging Face `model.safetensors` + `config.json`.
    HuggingFace,
}

pub struct Weights {
    pub layout: Layout,
    /// The weight file, for error messages.
    pub path: PathBuf,
    /// Tensors as the file stores them (fp16, bf16 or f32). The network takes each one once
    /// ([`Weights::take`]), converted to f32 then, and it leaves the map: loading holds the
    /// file's precision of what is not built yet plus what is built, never the whole model
    /// in f32 beside the built one (base: 545 MB peak before, see `benches/RESULTS.md`).
    tensors: RefCell<HashMap<String, Tensor>>,
    /// Attention heads as stored in the file (CTranslate2 scalars or HF config.json).
    pub encoder_heads: Option<usize>,
    pub decoder_heads: Option<usize>,
}

impl Weights {
    pub fn new(
        layout: Layout,
        path: PathBuf,
        tensors: HashMap<String, Tensor>,
        encoder_heads: Option<usize>,
        decoder_heads: Option<usize>,
    ) -> Self {
        Self {
            layout,
            path,
            tensors: RefCell::new(tensors),
            encoder_heads,
            decoder_heads,
        }
    }

    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let ct2 = dir.join("model.bin");
        let hf = dir.join("model.safetensors");
        if hf.exists() {
            super::hf::load(dir, device)
        } else if ct2.exists() {
            super::ct2::load(&ct2, device)
        } else if !dir.is_dir() {
            Err(ModelError::MissingFile {
                path: dir.to_path_buf(),
                what: "model directory",
            })
        } else {
            Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            path: self.path.clone(),
            name: name.into(),
        }
    }

    /// A tensor still in the map, as stored (shapes, device); it stays there.
    pub fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        self.tensors
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| self.missing(name))
    }

    /// Every tensor still in the map, as stored, by name (`convert`).
    pub fn stored(&self) -> Vec<(String, Tensor)> {
        let map = self.tensors.borrow();
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Remove a tensor that must have exactly `shape`, as stored (fp16 stays fp16).
    pub fn take_stored(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        self.tensors.borrow_mut().remove(name);
        Ok(t)
    }

    /// Remove a tensor that must have exactly `shape`, in f32. Taking it twice is
    /// [`ModelError::MissingTensor`].
    pub fn take(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.take_stored(name, shape)?;
        // fp16 on the CPU: half's vectorized slice conversion (candle's is a value at a time).
        let converted =
            super::rowmatmul::with_f16_bits(&t, whisperd_kernels::rowmatmul::f16_bits_to_f32);
        Ok(match converted {
            Some(v) => Tensor::from_vec(v, t.dims(), t.device())?,
            None => t.to_dtype(DType::F32)?,
        })
    }

    /// A bias (taken, f32), or zeros where the model has none (Whisper's key projections).
    pub fn bias_or_zeros(
        &self,
        name: &str,
        n: usize,
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        if self.tensors.borrow().contains_key(name) {
            self.take(name, &[n])
        } else {
            Ok(Tensor::zeros(n, DType::F32, device)?)
        }
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.tensors
                    .borrow()
                    .contains_key(&format!("{prefix}.layers.{i}.fc1.weight"))
            })
            .count()
    }

    fn dim(&self, name: &str, rank: usize, axis: usize) -> Result<usize, ModelError> {
        let t = self.get(name)?;
        if t.rank() != rank {
            return Err(ModelError::Format {
                path: self.path.clone(),
                msg: format!("tensor `{name}` has rank {}, expected {rank}", t.rank()),
            });
        }
        Ok(t.dims()[axis])
    }

    /// Model shapes, from the weights themselves.
    pub fn dims(&self) -> Result<ModelDims, ModelError> {
        let n_audio_state = self.dim("encoder.conv1.weight", 3, 0)?;
        let n_text_state = self.dim("decoder.embed_tokens.weight", 2, 1)?;
        // Whisper's heads are 64 wide in every published size.
        let n_audio_head = self.encoder_heads.unwrap_or(n_audio_state / 64);
        let n_text_head = self.decoder_heads.unwrap_or(n_text_state / 64);
        let dims = ModelDims {
            n_mels: self.dim("encoder.conv1.weight", 3, 1)?,
            n_audio_ctx: self.dim("encoder.embed_positions.weight", 2, 0)?,
            n_audio_state,
            n_audio_head,
            n_audio_layer: self.count_layers("encoder"),
            n_vocab: self.dim("decoder.embed_tokens.weight", 2, 0)?,
            n_text_ctx: self.dim("decoder.embed_positions.weight", 2, 0)?,
            n_text_state,
            n_text_head,
            n_text_layer: self.count_layers("decoder"),
        };
        let bad = |msg: String| ModelError::Format {
            path: self.path.clone(),
            msg,
        };
        if dims.n_audio_layer == 0 || dims.n_text_layer == 0 {
            return Err(bad("no encoder or decoder layers found".into()));
        }
        if n_audio_head == 0
            || n_audio_state % n_audio_head != 0
            || n_text_head == 0
            || n_text_state % n_text_head != 0
        {
            return Err(bad(format!("{n_audio_head}/{n_text_head} heads do not divide the widths {n_audio_state}/{n_text_state}")));
        }
        if dims.n_mels != 80 && dims.n_mels != 128 {
            return Err(bad(format!(
                "{} mel bins; Whisper uses 80 or 128",
                dims.n_mels
            )));
        }
        Ok(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensors wait in the file's fp16; the network takes each once, as f32, and it is gone.
    #[test]
    fn a_tensor_is_taken_once_as_f32_and_waits_as_stored() {
        let f16 = Tensor::new(&[1.5f32, -2.0, 0.25, 8.0], &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F16))
            .unwrap();
        let w = Weights::new(
            Layout::Ct2,
            "model.bin".into(),
            HashMap::from([("x.weight".to_string(), f16)]),
            None,
            None,
        );
        assert_eq!(w.get("x.weight").unwrap().dtype(), DType::F16);
        let e = w.take("x.weight", &[2, 2]).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let t = w.take("x.weight", &[4]).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.5, -2.0, 0.25, 8.0]);
        assert!(w.stored().is_empty());
        let e = w.take("x.weight", &[4]).unwrap_err().to_string();
        assert!(e.contains("`x.weight` is missing"), "{e}");
        // A missing bias is zeros of the asked length.
        let z = w.bias_or_zeros("x.bias", 3, &Device::Cpu).unwrap();
        assert_eq!(z.to_vec1::<f32>().unwrap(), vec![0.0; 3]);
    }
}
