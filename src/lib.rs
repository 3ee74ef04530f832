//! whisperd: Whisper speech-to-text as a library, a CLI and an HTTP service.
//!
//! The engine is the `whisperd-core` crate (`core/`): audio, VAD, log-mel, model, decoding,
//! scheduler, result cache and admission, re-exported here under the same names. This crate
//! adds what runs it: `server` (HTTP, realtime, async jobs over `jobs`), `batch` and the CLI
//! (`src/cli`, in the binary), `config`, `cluster` (Redis), `net` (URL fetching) and `telemetry`.

pub use whisperd_core::{
    admission, audio, cache, convert_to_safetensors, decode, diarize, engine, mel, model, output,
    scheduler, transcript, vad, CheckedOptions, Engine, EngineError, Format, Segment, Task,
    TranscribeOptions, Transcript,
};

pub mod batch;
pub mod cluster;
pub mod config;
pub mod jobs;
pub mod net;
pub mod server;
pub mod telemetry;
