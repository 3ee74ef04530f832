//! whisperd's engine, everything below the CLI and the HTTP service: `audio` (bytes → 16 kHz
//! mono) → `mel` (log-mel) → `model` (encoder, KV-cached decoder) → `decode` (tokens, rules,
//! long-form loop) → `transcript` (what decoding produces) → `output` (its formats). `vad` (energy
//! gate, Silero VAD) decides which audio reaches the decoder at all; `diarize` tells speakers
//! apart (GE2E voice embeddings). `engine` ties them together behind one call; `scheduler` batches
//! every transcription's model calls; `cache` and `admission` are what the server and `whisperd
//! batch` put in front of it (result cache, single flight, job queues).

pub mod admission;
pub mod audio;
pub mod cache;
pub mod decode;
pub mod diarize;
pub mod engine;
pub mod mel;
pub mod model;
pub mod output;
pub mod scheduler;
pub mod transcript;
pub mod vad;

pub use decode::{Task, TranscribeOptions};
pub use engine::{CheckedOptions, Engine, EngineError};
pub use output::Format;
pub use transcript::{Segment, Transcript};

/// Convert a model directory to the Hugging Face layout (`whisperd convert --to safetensors`).
pub fn convert_to_safetensors(
    src: &std::path::Path,
    dst: &std::path::Path,
) -> Result<(), EngineError> {
    let engine = Engine::load(src)?;
    let weights = model::Weights::load_dir(src, &candle_core::Device::Cpu)?;
    model::save_hf(&weights, &engine.model.dims, dst)?;
    let io = |e: std::io::Error| {
        EngineError::Model(model::ModelError::Io {
            path: dst.to_path_buf(),
            source: e,
        })
    };
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).map_err(io)?;
    engine::write_generation_config(&engine.suppress, &engine.model.alignment_heads, dst)
        .map_err(io)?;
    Ok(())
}
