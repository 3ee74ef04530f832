//! The Whisper network: weight loading from either on-disk layout, the audio encoder and the
//! KV-cached text decoder. Knows tensors, not tokens or text (that is `decode`).
//!
//! Both layouts are read into one map of Hugging Face-named tensors (`weights::Weights`); the
//! network is built from that map, so a layout is only a reader.

mod attention;
pub mod bf16;
mod ct2;
mod decoder;
mod encoder;
mod hf;
mod intgemm;
pub(crate) mod kernels;
mod linear;
pub mod rowmatmul;
mod weights;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use decoder::{AlignOutput, AlignRequest, DecoderPath, DecoderState, TextDecoder};
pub use encoder::{AudioEncoder, EncoderMath};
pub use hf::save as save_hf;
pub use linear::Precision;
pub use weights::{Layout, Weights};

/// Runs `f` on a thread of the compute pool (rayon's global pool, which the kernels, gemm and
/// candle fork into) and returns what it returns: at once where the caller is one of its
/// threads, else handed to the pool while the caller waits; the caller's tracing span goes
/// along. For `TextDecoder::step`: a step is ~35 parallel loops (every projection and
/// attention), and called from a thread outside the pool (the CLI's, the scheduler's) each
/// loop was handed over and waited for, two context switches a loop (7,000 a second in a
/// tiny.en beam-5 run), where on a pool thread each is a local fork-join. Only the step: a
/// window's encoder pass, setup and prefill are a few large loops each, and whole on the pool
/// they could be picked up by a worker waiting inside the scheduler's step and hold every
/// sequence's step up for their whole length.
pub(crate) fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let span = tracing::Span::current();
    rayon::scope(move |_| span.in_scope(f))
}

/// Shapes of a Whisper model, read from its weights (tiny … large-v3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelDims {
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_vocab: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
}

impl ModelDims {
    /// OpenAI's rule: multilingual vocabularies have 51865 or more entries.
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab >= 51_865
    }
}

/// Errors from finding, reading and checking model files. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {dir} has neither model.bin (CTranslate2) nor model.safetensors (Hugging Face); run `make model` or pass --model DIR")]
    NoWeights { dir: PathBuf },
    #[error("{path}: {what} is missing")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("precision {precision:?} cannot run on {device}: {why}")]
    Numerics {
        precision: Precision,
        device: String,
        why: &'static str,
    },
}

/// Refuse a precision the device cannot run, before any weight is converted: q8's quantized
/// projections and integer/AMX encoder are CPU kernels, so on a GPU they would silently run on
/// the host, copying activations back and forth every layer.
pub fn check_numerics(precision: Precision, device: &Device) -> Result<(), ModelError> {
    numerics_allowed(precision, device.is_cpu(), || {
        format!("{:?}", device.location())
    })
}

fn numerics_allowed(
    precision: Precision,
    on_cpu: bool,
    device: impl FnOnce() -> String,
) -> Result<(), ModelError> {
    if precision == Precision::Q8 && !on_cpu {
        return Err(ModelError::Numerics {
            precision,
            device: device(),
            why: "q8 runs on the CPU only; use precision = f32 on a GPU",
        });
    }
    Ok(())
}

/// How the network computes, chosen once at load from the precision, the device and what the
/// CPU has (see [`Numerics::choose`]), logged once as `model numerics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    pub precision: Precision,
    /// The encoder's 1500-row projections (and the decoder's cross-attention keys/values).
    pub encoder: EncoderMath,
    /// The encoder's self-attention.
    pub attention: AttentionMath,
    /// The widest tier of whisperd's own kernels in use.
    pub tier: whisperd_kernels::isa::Tier,
    /// Which decoder backend runs: the host kernels on the CPU, candle ops elsewhere.
    pub decoder: DecoderPath,
}

/// How the encoder's self-attention computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMath {
    /// bf16 products with f32 sums (AMX tiles or AVX-512 BF16): q8 only, lossy like its
    /// projections.
    Bf16,
    /// f32, fused per head and block of queries (AVX2 and up).
    F32Fused,
    /// 16-bit integer products with i32 sums, fused like `F32Fused`: q8 only, on CPUs without
    /// AVX-512 BF16.
    Int16,
    /// f32 in candle ops (a CPU without AVX2, or a GPU).
    F32,
}

impl Numerics {
    /// The numerics for `precision` on `device`, or the reason that pair cannot run. q8 is the
    /// lossy, fast setting: its encoder runs in bf16 on AMX where the CPU has it, else in
    /// integers (10-bit weights on AVX2, 8-bit on VNNI) with the attention in bf16 where the CPU has
    /// AVX-512 BF16 and in 16-bit integers where it does not.
    pub fn choose(precision: Precision, device: &Device) -> Result<Self, ModelError> {
        check_numerics(precision, device)?;
        let cpu = device.is_cpu();
        let encoder = if precision != Precision::Q8 || !cpu {
            EncoderMath::F32
        } else if bf16::amx_available() {
            EncoderMath::AmxBf16
        } else if intgemm::available() {
            EncoderMath::Int8Avx2
        } else {
            EncoderMath::F32
        };
        let attention = match encoder {
            EncoderMath::AmxBf16 => AttentionMath::Bf16,
            EncoderMath::Int8Avx2 if bf16::bf16_available() => AttentionMath::Bf16,
            EncoderMath::Int8Avx2 => AttentionMath::Int16,
            _ if cpu && attention::available() => AttentionMath::F32Fused,
            _ => AttentionMath::F32,
        };
        Ok(Self {
            precision,
            encoder,
            attention,
            tier: whisperd_kernels::isa::Tier::best(),
            decoder: if cpu {
                DecoderPath::Host
            } else {
                DecoderPath::Device
            },
        })
    }

    /// These numerics with the decoder on `path`, or why that cannot run: the device backend
    /// is f32 only, and the host backend reads host memory. (Tests run the device backend on
    /// candle's CPU device to compare it with the host's.)
    pub fn with_decoder(self, path: DecoderPath, device: &Device) -> Result<Self, ModelError> {
        let why = match path {
            DecoderPath::Device if self.precision == Precision::Q8 => {
                Some("the device decoder is f32 only; q8 runs on the host kernels")
            }
            DecoderPath::Host if !device.is_cpu() => {
                Some("the host decoder reads host memory; a GPU takes the device decoder")
            }
            _ => None,
        };
        match why {
            Some(why) => Err(ModelError::Numerics {
                precision: self.precision,
                device: format!("{:?}", device.location()),
                why,
            }),
            None => Ok(Self {
                decoder: path,
                ..self
            }),
        }
    }
}

/// A loaded Whisper model: encoder and decoder on one device.
pub struct Whisper {
    /// How it computes (chosen once at load).
    pub numerics: Numerics,
    pub dims: ModelDims,
    pub encoder: AudioEncoder,
    pub decoder: TextDecoder,
    pub device: Device,
    pub layout: Layout,
    /// The decoder's `(layer, head)` pairs whose cross-attention follows the speech in time (word
    /// timestamps; see [`alignment_heads`]).
    pub alignment_heads: Vec<(usize, usize)>,
}

impl Whisper {
    /// Load from a directory in either layout (detected by which weight file is present).
    pub fn load(dir: &Path, device: &Device, precision: Precision) -> Result<Self, ModelError> {
        Self::load_with(dir, device, Numerics::choose(precision, device)?)
    }

    /// [`Whisper::load`] with the numerics given (see [`Numerics::with_decoder`]).
    pub fn load_with(dir: &Path, device: &Device, numerics: Numerics) -> Result<Self, ModelError> {
        let weights = Weights::load_dir(dir, device)?;
        let mut model = Self::from_weights_with(weights, device, numerics)?;
        model.alignment_heads = alignment_heads(dir, &model.dims)?;
        Ok(model)
    }

    /// Build the network from `w`, which it consumes tensor by tensor (see [`Weights::take`]).
    pub fn from_weights(
        w: Weights,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        Self::from_weights_with(w, device, Numerics::choose(precision, device)?)
    }

    /// [`Whisper::from_weights`] with the numerics given.
    pub fn from_weights_with(
        w: Weights,
        device: &Device,
        numerics: Numerics,
    ) -> Result<Self, ModelError> {
        check_numerics(numerics.precision, device)?;
        let numerics = numerics.with_decoder(numerics.decoder, device)?;
        let dims = w.dims()?;
        tracing::info!(
            precision = ?numerics.precision,
            encoder = ?numerics.encoder,
            attention = ?numerics.attention,
            decoder = ?numerics.decoder,
            tier = numerics.tier.name(),
            "model numerics"
        );
        let encoder = AudioEncoder::new(&w, &dims, numerics)?;
        let decoder = TextDecoder::new(
            &w,
            &dims,
            numerics.precision,
            numerics.decoder,
            numerics.encoder,
        )?;
        Ok(Self {
            numerics,
            alignment_heads: default_alignment_heads(&dims),
            dims,
            encoder,
            decoder,
            device: device.clone(),
            layout: w.layout,
        })
    }

    /// Encode a batch of log-mel windows `(batch, n_mels, 3000)`.
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.encoder.forward(mel)?)
    }
}

/// The alignment heads a model directory names: `alignment_heads` in CTranslate2's `config.json`
/// or in Hugging Face's `generation_config.json` (`[[layer, head], …]`); when neither has them,
/// every head of the upper half of the decoder layers (OpenAI's default). A list naming a head
/// the model lacks is an error, not a silent misalignment.
pub fn alignment_heads(dir: &Path, dims: &ModelDims) -> Result<Vec<(usize, usize)>, ModelError> {
    for name in ["config.json", "generation_config.json"] {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let bad = |msg: String| ModelError::Format {
            path: path.clone(),
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Some(list) = v.get("alignment_heads") else {
            continue;
        };
        let pairs = list
            .as_array()
            .ok_or_else(|| bad("alignment_heads is not a list".into()))?
            .iter()
            .map(|p| {
                let pair = p.as_array().filter(|a| a.len() == 2);
                let n = |i: usize| pair.and_then(|a| a[i].as_u64()).map(|x| x as usize);
                match (n(0), n(1)) {
                    (Some(l), Some(h)) if l < dims.n_text_layer && h < dims.n_text_head => {
                        Ok((l, h))
                    }
                    _ => Err(bad(format!(
                        "alignment_heads entry {p} is not a [layer, head] of this model ({} layers, {} heads)",
                        dims.n_text_layer, dims.n_text_head
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !pairs.is_empty() {
            tracing::debug!(file = %path.display(), heads = ?pairs, "alignment heads");
            return Ok(pairs);
        }
    }
    tracing::info!(
        "no alignment_heads in the model directory: word timestamps use every head of the upper half of the decoder layers"
    );
    Ok(default_alignment_heads(dims))
}

/// Every head of the upper half of the decoder layers.
pub fn default_alignment_heads(dims: &ModelDims) -> Vec<(usize, usize)> {
    (dims.n_text_layer / 2..dims.n_text_layer)
        .flat_map(|l| (0..dims.n_text_head).map(move |h| (l, h)))
        .collect()
}

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

/// Largest |a − b| over two tensors of one shape (kernel tests).
#[cfg(test)]
pub(crate) fn test_max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("tensors of one shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From outside the pool the work moves onto a pool thread (where the kernels' parallel
    /// loops are local fork-joins); on a pool thread it stays there; the result comes back.
    #[test]
    fn network_calls_run_on_the_compute_pool() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "the test thread is not a pool thread"
        );
        let (index, value) = on_compute_pool(|| (rayon::current_thread_index(), 42));
        assert!(index.is_some(), "ran outside the pool");
        assert_eq!(value, 42);
        let (outer, inner) = on_compute_pool(|| {
            let outer = std::thread::current().id();
            (outer, on_compute_pool(|| std::thread::current().id()))
        });
        assert_eq!(outer, inner, "a pool thread handed its work to another");
    }

    #[test]
    fn q8_is_refused_off_the_cpu() {
        assert!(check_numerics(Precision::Q8, &Device::Cpu).is_ok());
        assert!(check_numerics(Precision::F32, &Device::Cpu).is_ok());
        assert!(numerics_allowed(Precision::F32, false, || "Cuda".into()).is_ok());
        let e = numerics_allowed(Precision::Q8, false, || "Cuda { gpu_id: 0 }".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("CPU only") && e.contains("Cuda"), "{e}");
    }

    /// One value says how the model computes: f32 is never lossy; q8 takes the fastest lossy
    /// path this CPU has, with the attention in bf16 wherever the CPU multiplies bf16.
    #[test]
    fn numerics_follow_precision_and_cpu() {
        let f = Numerics::choose(Precision::F32, &Device::Cpu).unwrap();
        assert_eq!(f.encoder, EncoderMath::F32);
        assert_ne!(f.attention, AttentionMath::Bf16);
        assert_eq!(
            f.attention == AttentionMath::F32Fused,
            attention::available()
        );
        let q = Numerics::choose(Precision::Q8, &Device::Cpu).unwrap();
        let want = if bf16::amx_available() {
            (EncoderMath::AmxBf16, AttentionMath::Bf16)
        } else if intgemm::available() && bf16::bf16_available() {
            (EncoderMath::Int8Avx2, AttentionMath::Bf16)
        } else if intgemm::available() {
            (EncoderMath::Int8Avx2, AttentionMath::Int16)
        } else {
            (EncoderMath::F32, AttentionMath::F32)
        };
        assert_eq!((q.encoder, q.attention), want);
        assert_eq!(q.tier, whisperd_kernels::isa::Tier::best());
    }

    fn dims() -> ModelDims {
        ModelDims {
            n_mels: 80,
            n_audio_ctx: 1500,
            n_audio_state: 384,
            n_audio_head: 6,
            n_audio_layer: 4,
            n_vocab: 51864,
            n_text_ctx: 448,
            n_text_state: 384,
            n_text_head: 6,
            n_text_layer: 4,
        }
    }

    #[test]
    fn alignment_heads_from_either_config_or_the_upper_half() {
        let dir = tempfile::tempdir().unwrap();
        // Neither file: every head of layers 2 and 3.
        let h = alignment_heads(dir.path(), &dims()).unwrap();
        assert_eq!(h.len(), 12);
        assert_eq!((h[0], h[11]), ((2, 0), (3, 5)));
        // Hugging Face's generation_config.json.
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"alignment_heads": [[2, 2], [3, 0]]}"#,
        )
        .unwrap();
        assert_eq!(
            alignment_heads(dir.path(), &dims()).unwrap(),
            vec![(2, 2), (3, 0)]
        );
        // CTranslate2's config.json wins.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"alignment_heads": [[1, 0], [3, 4]]}"#,
        )
        .unwrap();
        assert_eq!(
            alignment_heads(dir.path(), &dims()).unwrap(),
            vec![(1, 0), (3, 4)]
        );
        // A head the model lacks is an error naming the file.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"alignment_heads": [[4, 0]]}"#,
        )
        .unwrap();
        let e = alignment_heads(dir.path(), &dims())
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("[4,0]"), "{e}");
    }
}
