//! The boundary between decoding (tokens, rules, the long-form loop) and the network. Decoding
//! only asks for the model's dimensions and device and for these operations (encode, prepare,
//! prefill, step, align), never for the model itself; `Whisper` answers them at once, and the
//! scheduler's handle (`crate::scheduler`) answers them in batches shared with other requests.
//! Both give the same numbers, so a transcript does not depend on how it was scheduled.
//! The per-sequence state these operations hand around, `DecoderState`, belongs to the decoder
//! backend the model was loaded with (`crate::model::decoder`: host kernels or candle-device
//! ops); decoding forks, reorders and resets it without knowing which.

use candle_core::{Device, Tensor};

use super::DecodeError;
use crate::model::{AlignOutput, AlignRequest, DecoderState, ModelDims, Whisper};

pub trait ModelRunner: Sync {
    /// The dimensions of the model the operations run on (its context lengths, whether it is
    /// multilingual).
    fn dims(&self) -> &ModelDims;

    /// Where the operations' input tensors (log-mel windows) are made.
    fn device(&self) -> &Device;

    /// One log-mel window `(1, n_mels, 3000)` → audio features `(1, 1500, d)`.
    fn encode(&self, mel: Tensor) -> Result<Tensor, DecodeError>;

    /// Cross-attention keys/values for `features`: a fresh decoding state.
    fn prepare(&self, features: &Tensor) -> Result<DecoderState, DecodeError>;

    /// Feed a whole start sequence; returns the logits at each of `rows` (indices into `tokens`).
    /// Starts a sequence that continues with [`step`](Self::step) until
    /// [`end_sequence`](Self::end_sequence).
    fn prefill(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, DecodeError>;

    /// Feed one token to each lane of the sequence (one lane when greedy or sampling; the beams
    /// of a beam search, which share their window's audio and start sequence); returns each
    /// lane's logits for its next token, in lane order.
    fn step(
        &self,
        lanes: &mut [DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, DecodeError>;

    /// The sequence started by the last `prefill` takes no more steps (a batching runner stops
    /// waiting for it).
    fn end_sequence(&self) {}

    /// The alignment pass of word timestamps over `state`'s audio (its token cache is reset):
    /// cross-attention weights of the alignment heads and token probabilities.
    fn align(
        &self,
        state: &mut DecoderState,
        req: AlignRequest,
    ) -> Result<AlignOutput, DecodeError>;
}

impl ModelRunner for Whisper {
    fn dims(&self) -> &ModelDims {
        &self.dims
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn encode(&self, mel: Tensor) -> Result<Tensor, DecodeError> {
        Ok(self.encoder.forward(&mel)?)
    }

    fn prepare(&self, features: &Tensor) -> Result<DecoderState, DecodeError> {
        Ok(self.decoder.prepare(features)?)
    }

    fn prefill(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let hidden = self.decoder.forward(&input, state)?.squeeze(0)?;
        // All requested rows through the vocabulary projection at once: its weights (the
        // largest matrix of the decoder) are read once instead of once per row.
        let picked: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let picked = Tensor::new(picked.as_slice(), &self.device)?;
        let logits = self.decoder.logits(&hidden.index_select(&picked, 0)?)?;
        (0..rows.len())
            .map(|i| Ok(logits.get(i)?.to_vec1()?))
            .collect()
    }

    fn step(
        &self,
        lanes: &mut [DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        let mut refs: Vec<&mut DecoderState> = lanes.iter_mut().collect();
        Ok(self.decoder.step(&mut refs, tokens)?.to_vec2()?)
    }

    fn align(
        &self,
        state: &mut DecoderState,
        req: AlignRequest,
    ) -> Result<AlignOutput, DecodeError> {
        let mut out = self
            .decoder
            .align(&mut [state], &[req], &self.alignment_heads)?;
        out.pop()
            .ok_or_else(|| candle_core::Error::Msg("alignment returned nothing".into()).into())
    }
}

/// Calls `end_sequence` when dropped, so a sequence that fails half-way still ends.
pub(super) struct SequenceGuard<'a>(pub &'a dyn ModelRunner);

impl Drop for SequenceGuard<'_> {
    fn drop(&mut self) {
        self.0.end_sequence();
    }
}

/// A runner whose model calls (encode, prefill, decoder steps) fail with
/// [`DecodeError::Cancelled`] once `cancelled()` says so: a transcription nobody waits for any
/// more stops at its next call, within one decoder step, instead of running to the end (a
/// realtime session's superseded partial pass frees the CPU for the final one at once).
pub struct Cancellable<'a, F: Fn() -> bool + Sync> {
    pub inner: &'a dyn ModelRunner,
    pub cancelled: F,
}

impl<F: Fn() -> bool + Sync> ModelRunner for Cancellable<'_, F> {
    fn dims(&self) -> &ModelDims {
        self.inner.dims()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn encode(&self, mel: Tensor) -> Result<Tensor, DecodeError> {
        if (self.cancelled)() {
            return Err(DecodeError::Cancelled);
        }
        self.inner.encode(mel)
    }
    fn prepare(&self, features: &Tensor) -> Result<DecoderState, DecodeError> {
        self.inner.prepare(features)
    }
    fn prefill(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        if (self.cancelled)() {
            return Err(DecodeError::Cancelled);
        }
        self.inner.prefill(state, tokens, rows)
    }
    fn step(
        &self,
        lanes: &mut [DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        if (self.cancelled)() {
            return Err(DecodeError::Cancelled);
        }
        self.inner.step(lanes, tokens)
    }
    fn end_sequence(&self) {
        self.inner.end_sequence()
    }
    fn align(
        &self,
        state: &mut DecoderState,
        req: AlignRequest,
    ) -> Result<AlignOutput, DecodeError> {
        self.inner.align(state, req)
    }
}
