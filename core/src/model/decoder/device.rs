//! The device backend: the decoder in candle ops end to end. A step's activations, every
//! layer's key/value cache and the window's audio keys/values are tensors on the model's
//! device, from the token embedding to the logits; nothing goes through host memory between
//! layers (the host backend's row kernels and per-query attention read host slices, so on a
//! GPU they would copy every layer of every step).
//!
//! f32 only (q8's kernels are the host's). On candle's CPU device it gives the host backend's
//! tokens (`tests/parity.rs`), which is how it is tested without a GPU.

use std::sync::Arc;

use candle_core::{Device, Module, Tensor, D};
use candle_nn::ops::softmax_last_dim;
use candle_nn::{LayerNorm, Linear};

use crate::model::encoder::{layer_norm, linear};
use crate::model::weights::Weights;
use crate::model::{ModelDims, ModelError};

use super::{row_spans, window_audio, AlignCapture, Block, DecoderBackend, SequenceState};

pub struct DeviceDecoder {
    /// Token embeddings `(n_vocab, d)` in f32, also the tied output projection.
    embed: Tensor,
    positions: Tensor,
    blocks: Vec<Block<Linear>>,
    /// Per layer, the cross-attention's key and value projections.
    cross_kv: Vec<(Linear, Linear)>,
    ln: LayerNorm,
    n_head: usize,
    n_ctx: usize,
    device: Device,
}

/// One sequence on the device: per layer the keys and values of the tokens fed so far
/// (`(heads, tokens, dh)`; each step makes new tensors, so a fork shares the old ones — copy
/// on write — and sharing a prefix costs nothing), and the window's audio keys/values.
pub struct DeviceState {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer, audio keys and values `(heads, n_audio, dh)`, shared by a window's lanes.
    cross: Arc<Vec<(Tensor, Tensor)>>,
    n_audio: usize,
    position: usize,
}

impl SequenceState for DeviceState {
    fn position(&self) -> usize {
        self.position
    }
    fn n_audio(&self) -> usize {
        self.n_audio
    }
    fn reset(&mut self) {
        self.kv.iter_mut().for_each(|l| *l = None);
        self.position = 0;
    }
    fn share_prefix(&mut self) {
        // Tensors are immutable and reference-counted: forks already share them.
    }
    fn fork(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            cross: self.cross.clone(),
            n_audio: self.n_audio,
            position: self.position,
        }
    }
}

impl DeviceDecoder {
    pub fn new(w: &Weights, dims: &ModelDims) -> Result<Self, ModelError> {
        let d = dims.n_text_state;
        let blocks = (0..dims.n_text_layer)
            .map(|i| Block::read(w, dims, i))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let cross_kv = (0..dims.n_text_layer)
            .map(|i| {
                let p = format!("decoder.layers.{i}.encoder_attn");
                Ok((
                    linear(w, &format!("{p}.k_proj"), d, d)?,
                    linear(w, &format!("{p}.v_proj"), d, d)?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed = w.take("decoder.embed_tokens.weight", &[dims.n_vocab, d])?;
        Ok(Self {
            device: embed.device().clone(),
            embed,
            positions: w.take("decoder.embed_positions.weight", &[dims.n_text_ctx, d])?,
            blocks,
            cross_kv,
            ln: layer_norm(w, "decoder.layer_norm", d)?,
            n_head: dims.n_text_head,
            n_ctx: dims.n_text_ctx,
        })
    }

    /// `(n, d)` → `(heads, n, dh)`.
    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        x.reshape((n, self.n_head, d / self.n_head))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// `(heads, n, dh)` → `(n, d)`.
    fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
        let (h, n, dh) = x.dims3()?;
        x.transpose(0, 1)?.contiguous()?.reshape((n, h * dh))
    }

    /// `(n, past + n)`: 0 where row `i` may attend (positions up to `past + i`), −∞ after.
    fn causal_mask(&self, n: usize, past: usize) -> candle_core::Result<Tensor> {
        let cols = past + n;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..cols).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        Tensor::from_vec(mask, (n, cols), &self.device)
    }
}

impl DecoderBackend for DeviceDecoder {
    type State = DeviceState;

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    fn n_head(&self) -> usize {
        self.n_head
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn prepare(&self, audio: &Tensor) -> candle_core::Result<DeviceState> {
        let audio = window_audio(audio)?;
        let t = audio.dim(0)?;
        let cross = self
            .cross_kv
            .iter()
            .map(|(k, v)| {
                Ok((
                    self.split_heads(&k.forward(&audio)?)?,
                    self.split_heads(&v.forward(&audio)?)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DeviceState {
            kv: vec![None; self.blocks.len()],
            cross: Arc::new(cross),
            n_audio: t,
            position: 0,
        })
    }

    fn run(
        &self,
        states: &mut [&mut DeviceState],
        rows: &[(usize, u32)],
        _row_kernel: bool,
        mut capture: Option<&mut AlignCapture>,
    ) -> candle_core::Result<Tensor> {
        let (positions, spans) = row_spans(states, rows, self.n_ctx)?;
        if spans.iter().any(|&(_, n)| n == 0) || spans.windows(2).any(|s| s[0].0 + s[0].1 != s[1].0)
        {
            candle_core::bail!("the device decoder takes each sequence's rows in sequence order");
        }
        if states.iter().any(|s| s.cross.len() != self.blocks.len()) {
            candle_core::bail!("decoder state was not prepared for this model");
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        if ids
            .iter()
            .any(|&t| t as usize >= self.embed.dim(0).unwrap_or(0))
        {
            candle_core::bail!("token id out of the vocabulary");
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        let mut x = (self.embed.index_select(&ids, 0)? + self.positions.index_select(&pos, 0)?)?;
        let d = x.dim(1)?;
        for (i, block) in self.blocks.iter().enumerate() {
            // Self-attention over each sequence's cache, grown by its rows.
            let qkv = block.self_qkv.forward(&block.self_ln.forward(&x)?)?;
            let mut outs = Vec::with_capacity(spans.len());
            for (st, &(first, n)) in states.iter_mut().zip(&spans) {
                let part = qkv.narrow(0, first, n)?;
                let q = self.split_heads(&part.narrow(1, 0, d)?)?;
                let k = self.split_heads(&part.narrow(1, d, d)?)?;
                let v = self.split_heads(&part.narrow(1, 2 * d, d)?)?;
                let (k, v) = match &st.kv[i] {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?),
                    None => (k, v),
                };
                let mut scores = q.matmul(&k.t()?)?;
                if n > 1 {
                    scores = scores.broadcast_add(&self.causal_mask(n, st.position)?)?;
                }
                outs.push(Self::merge_heads(&softmax_last_dim(&scores)?.matmul(&v)?)?);
                st.kv[i] = Some((k, v));
            }
            x = (&x + block.self_out.forward(&Tensor::cat(&outs, 0)?)?)?;

            // Cross-attention to the window's audio.
            let q = block.cross_q.forward(&block.cross_ln.forward(&x)?)?;
            let mut outs = Vec::with_capacity(spans.len());
            for (seq, (st, &(first, n))) in states.iter().zip(&spans).enumerate() {
                let (ck, cv) = &st.cross[i];
                let scores = self
                    .split_heads(&q.narrow(0, first, n)?)?
                    .matmul(&ck.t()?)?;
                if let Some(cap) = capture.as_deref_mut() {
                    for hi in 0..cap.heads.len() {
                        let (l, h) = cap.heads[hi];
                        if l != i {
                            continue;
                        }
                        let f = cap.n_frames[seq];
                        let w = softmax_last_dim(
                            &scores.get(h)?.narrow(D::Minus1, 0, f)?.contiguous()?,
                        )?;
                        for (local, row) in w.to_vec2::<f32>()?.iter().enumerate() {
                            cap.put(seq, hi, local, row);
                        }
                    }
                }
                outs.push(Self::merge_heads(&softmax_last_dim(&scores)?.matmul(cv)?)?);
            }
            x = (&x + block.cross_out.forward(&Tensor::cat(&outs, 0)?)?)?;

            let h = block.fc1.forward(&block.mlp_ln.forward(&x)?)?.gelu_erf()?;
            x = (&x + block.fc2.forward(&h)?)?;
        }
        for (st, &(_, n)) in states.iter_mut().zip(&spans) {
            st.position += n;
        }
        self.ln.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        hidden.matmul(&self.embed.t()?)
    }
}
