//! Hugging Face layout: `model.safetensors` + `config.json` (as `openai/whisper-*` ship), read and
//! written. Writing is what `whisperd convert --to safetensors` uses.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_transformers::models::whisper::Config as HfConfig;

use super::weights::{Layout, Weights};
use super::{ModelDims, ModelError};

pub fn load(dir: &Path, device: &Device) -> Result<Weights, ModelError> {
    let st = dir.join("model.safetensors");
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|_| ModelError::MissingFile {
        path: cfg_path.clone(),
        what: "config.json (Hugging Face model config)",
    })?;
    let cfg: HfConfig = serde_json::from_str(&cfg_text).map_err(|e| ModelError::Format {
        path: cfg_path.clone(),
        msg: format!("not a Whisper config: {e}"),
    })?;
    let raw = candle_core::safetensors::load(&st, device).map_err(|e| ModelError::Format {
        path: st.clone(),
        msg: format!("cannot read safetensors: {e}"),
    })?;
    let mut tensors = HashMap::with_capacity(raw.len());
    for (name, t) in raw {
        let name = name.strip_prefix("model.").unwrap_or(&name).to_string();
        if name == "proj_out.weight" {
            continue; // tied to decoder.embed_tokens
        }
        tensors.insert(name, t);
    }
    let w = Weights::new(
        Layout::HuggingFace,
        st.clone(),
        tensors,
        Some(cfg.encoder_attention_heads),
        Some(cfg.decoder_attention_heads),
    );
    // The config must describe these weights, or heads/layers would be silently wrong.
    let dims = w.dims()?;
    let checks = [
        ("num_mel_bins", cfg.num_mel_bins, dims.n_mels),
        ("d_model", cfg.d_model, dims.n_audio_state),
        ("encoder_layers", cfg.encoder_layers, dims.n_audio_layer),
        ("decoder_layers", cfg.decoder_layers, dims.n_text_layer),
        ("vocab_size", cfg.vocab_size, dims.n_vocab),
    ];
    for (key, in_config, in_weights) in checks {
        if in_config != in_weights {
            return Err(ModelError::Format {
                path: cfg_path.clone(),
                msg: format!("{key} is {in_config} but model.safetensors has {in_weights}"),
            });
        }
    }
    Ok(w)
}

/// Write `weights` as a Hugging Face directory: fp16 `model.safetensors` (lossless for fp16
/// sources) and a `config.json` describing `dims`.
pub fn save(weights: &Weights, dims: &ModelDims, dst: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dst).map_err(|source| ModelError::Io {
        path: dst.into(),
        source,
    })?;
    let mut out = HashMap::new();
    for (name, t) in weights.stored() {
        out.insert(format!("model.{name}"), t.to_dtype(DType::F16)?);
    }
    let st = dst.join("model.safetensors");
    candle_core::safetensors::save(&out, &st)?;
    let config = serde_json::json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer,
        "encoder_ffn_dim": dims.n_audio_state * 4,
        "vocab_size": dims.n_vocab,
        "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_ffn_dim": dims.n_text_state * 4,
        "activation_function": "gelu",
        "torch_dtype": "float16",
    });
    let cfg_path = dst.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Format {
        path: cfg_path.clone(),
        msg: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text).map_err(|source| ModelError::Io {
        path: cfg_path,
        source,
    })?;
    Ok(())
}
