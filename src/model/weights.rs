//! One map of f32 tensors under Hugging Face names (without the `model.` prefix), whatever the
//! layout on disk, plus the few facts the files carry beside the tensors.

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
    pub tensors: HashMap<String, Tensor>,
    /// Attention heads as stored in the file (CTranslate2 scalars or HF config.json).
    pub encoder_heads: Option<usize>,
    pub decoder_heads: Option<usize>,
}

impl Weights {
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

    pub fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// A tensor that must have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// A bias, or zeros where the model has none (Whisper's key projections).
    pub fn bias_or_zeros(
        &self,
        name: &str,
        n: usize,
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        match self.tensors.get(name) {
            Some(_) => self.get_shaped(name, &[n]),
            None => Ok(Tensor::zeros(n, DType::F32, device)?),
        }
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.tensors
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
