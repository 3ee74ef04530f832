//! Whisper's text decoder with a key/value cache: each step feeds only the new tokens, and the
//! cross-attention keys/values are computed once per audio window (`prepare`).
//! Shapes keep a batch dimension: several sequences decode together.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{LayerNorm, Linear};

use super::linear::{quantize, Precision, Proj};

use super::encoder::{fused_qkv, layer_norm, linear};
use super::weights::Weights;
use super::{ModelDims, ModelError};

struct DecoderBlock {
    self_ln: LayerNorm,
    self_qkv: Proj,
    self_out: Proj,
    cross_ln: LayerNorm,
    cross_q: Proj,
    /// Runs once per window over 1500 rows: always f32.
    cross_kv: Linear,
    cross_out: Proj,
    mlp_ln: LayerNorm,
    fc1: Proj,
    fc2: Proj,
}

/// Per-window decoding state: the self-attention cache of every layer, the cross-attention keys
/// (already transposed for the matmul) and values, and the next position.
pub struct DecoderState {
    self_kv: Vec<KvCache>,
    cross_kt: Vec<Tensor>,
    cross_v: Vec<Tensor>,
    position: usize,
    batch: usize,
}

impl DecoderState {
    pub fn position(&self) -> usize {
        self.position
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// A state with no audio, to stand in while the real one is away (see the scheduler).
    pub fn empty() -> Self {
        Self {
            self_kv: Vec::new(),
            cross_kt: Vec::new(),
            cross_v: Vec::new(),
            position: 0,
            batch: 0,
        }
    }
    /// Forget the tokens fed so far (keeps the window's cross-attention keys/values).
    pub fn reset(&mut self) {
        self.self_kv.iter_mut().for_each(|c| c.reset());
        self.position = 0;
    }
}

pub struct TextDecoder {
    embed_tokens: Tensor,
    /// The tied output projection, quantized when precision is q8.
    logits_q8: Option<QMatMul>,
    positions: Tensor,
    blocks: Vec<DecoderBlock>,
    ln: LayerNorm,
    n_head: usize,
    n_ctx: usize,
}

fn split_heads(x: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.reshape((b, t, n_head, d / n_head))?
        .transpose(1, 2)?
        .contiguous()
}

fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, dh) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * dh))
}

impl TextDecoder {
    pub fn new(w: &Weights, dims: &ModelDims, precision: Precision) -> Result<Self, ModelError> {
        let d = dims.n_text_state;
        let blocks = (0..dims.n_text_layer)
            .map(|i| {
                let p = format!("decoder.layers.{i}");
                let scale = ((d / dims.n_text_head) as f64).powf(-0.5);
                let q = linear(w, &format!("{p}.encoder_attn.q_proj"), d, d)?;
                let cross_q = Linear::new(
                    (q.weight() * scale)?,
                    q.bias().map(|b| b * scale).transpose()?,
                );
                let k = linear(w, &format!("{p}.encoder_attn.k_proj"), d, d)?;
                let v = linear(w, &format!("{p}.encoder_attn.v_proj"), d, d)?;
                let kv_w = Tensor::cat(&[k.weight(), v.weight()], 0)?;
                let kv_b = match (k.bias(), v.bias()) {
                    (Some(kb), Some(vb)) => Some(Tensor::cat(&[kb, vb], 0)?),
                    _ => None,
                };
                Ok(DecoderBlock {
                    self_ln: layer_norm(w, &format!("{p}.self_attn_layer_norm"), d)?,
                    self_qkv: Proj::new(
                        fused_qkv(w, &format!("{p}.self_attn"), d, dims.n_text_head)?,
                        precision,
                    )?,
                    self_out: Proj::new(
                        linear(w, &format!("{p}.self_attn.out_proj"), d, d)?,
                        precision,
                    )?,
                    cross_ln: layer_norm(w, &format!("{p}.encoder_attn_layer_norm"), d)?,
                    cross_q: Proj::new(cross_q, precision)?,
                    cross_kv: Linear::new(kv_w, kv_b),
                    cross_out: Proj::new(
                        linear(w, &format!("{p}.encoder_attn.out_proj"), d, d)?,
                        precision,
                    )?,
                    mlp_ln: layer_norm(w, &format!("{p}.final_layer_norm"), d)?,
                    fc1: Proj::new(linear(w, &format!("{p}.fc1"), 4 * d, d)?, precision)?,
                    fc2: Proj::new(linear(w, &format!("{p}.fc2"), d, 4 * d)?, precision)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed_tokens = w.get_shaped("decoder.embed_tokens.weight", &[dims.n_vocab, d])?;
        let logits_q8 = match precision {
            Precision::Q8 => Some(quantize(&embed_tokens)?),
            Precision::F32 => None,
        };
        Ok(Self {
            embed_tokens,
            logits_q8,
            positions: w.get_shaped("decoder.embed_positions.weight", &[dims.n_text_ctx, d])?,
            blocks,
            ln: layer_norm(w, "decoder.layer_norm", d)?,
            n_head: dims.n_text_head,
            n_ctx: dims.n_text_ctx,
        })
    }

    /// Largest number of tokens one sequence may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Compute the cross-attention keys/values of every layer for `audio` `(batch, 1500, d)`.
    pub fn prepare(&self, audio: &Tensor) -> candle_core::Result<DecoderState> {
        let (b, t, d) = audio.dims3()?;
        let dh = d / self.n_head;
        let mut cross_kt = Vec::with_capacity(self.blocks.len());
        let mut cross_v = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let kv = block
                .cross_kv
                .forward(audio)?
                .reshape((b, t, 2, self.n_head, dh))?
                .permute((2, 0, 3, 1, 4))?;
            cross_kt.push(kv.get(0)?.transpose(2, 3)?.contiguous()?);
            cross_v.push(kv.get(1)?.contiguous()?);
        }
        Ok(DecoderState {
            self_kv: self
                .blocks
                .iter()
                .map(|_| KvCache::new(2, self.n_ctx))
                .collect(),
            cross_kt,
            cross_v,
            position: 0,
            batch: b,
        })
    }

    /// Feed `tokens` `(batch, n)` at the state's position; returns the final hidden states
    /// `(batch, n, d)` (see `logits`). The cache grows by `n`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
    ) -> candle_core::Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        let pos = state.position;
        if pos + n > self.n_ctx {
            candle_core::bail!(
                "decoder context of {} tokens exceeded ({} + {n})",
                self.n_ctx,
                pos
            );
        }
        let emb = self
            .embed_tokens
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, n, ()))?;
        let mut x = emb.broadcast_add(&self.positions.narrow(0, pos, n)?)?;
        let mask = if n > 1 {
            Some(causal_mask(n, pos, tokens.device())?)
        } else {
            None
        };
        for (i, block) in self.blocks.iter().enumerate() {
            // Self-attention over the cache plus the new tokens.
            let h = block.self_ln.forward(&x)?;
            let (bb, t, d) = h.dims3()?;
            let dh = d / self.n_head;
            let qkv = block
                .self_qkv
                .forward(&h)?
                .reshape((bb, t, 3, self.n_head, dh))?
                .permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?;
            let (k, v) =
                state.self_kv[i].append(&qkv.get(1)?.contiguous()?, &qkv.get(2)?.contiguous()?)?;
            let mut att = q.matmul(&k.t()?)?;
            if let Some(m) = &mask {
                att = att.broadcast_add(m)?;
            }
            let att = super::kernels::softmax_last_dim_owned(att)?;
            x = (x + block
                .self_out
                .forward(&merge_heads(&att.matmul(&v.contiguous()?)?)?)?)?;

            // Cross-attention to the audio features prepared once for this window.
            let h = block.cross_ln.forward(&x)?;
            let q = split_heads(&block.cross_q.forward(&h)?, self.n_head)?;
            let att = super::kernels::softmax_last_dim_owned(q.matmul(&state.cross_kt[i])?)?;
            x = (x + block
                .cross_out
                .forward(&merge_heads(&att.matmul(&state.cross_v[i])?)?)?)?;

            let h = super::kernels::gelu_erf_owned(block.fc1.forward(&block.mlp_ln.forward(&x)?)?)?;
            x = (x + block.fc2.forward(&h)?)?;
        }
        state.position += n;
        self.ln.forward(&x)
    }

    /// One token for each of several independent sequences (continuous batching): `states[i]`
    /// gets `tokens[i]` at its own position. The projections, MLPs and logits run as one
    /// `(batch, d)` matmul, reading every weight once per step instead of once per sequence;
    /// attention runs per sequence against its own cache and audio. Returns `(batch, n_vocab)`
    /// logits. With one sequence this is the same arithmetic as `forward` with one token.
    pub fn step(
        &self,
        states: &mut [&mut DecoderState],
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let b = states.len();
        if b == 0 || tokens.len() != b {
            candle_core::bail!(
                "step needs one token per sequence ({} for {b})",
                tokens.len()
            );
        }
        let device = self.embed_tokens.device();
        let mut positions = Vec::with_capacity(b);
        for s in states.iter() {
            if s.position + 1 > self.n_ctx {
                candle_core::bail!("decoder context of {} tokens exceeded", self.n_ctx);
            }
            positions.push(s.position as u32);
        }
        let emb = self
            .embed_tokens
            .index_select(&Tensor::new(tokens, device)?, 0)?;
        let pos = self
            .positions
            .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
        let mut x = (emb + pos)?.unsqueeze(1)?; // (b, 1, d)
        let d = x.dim(2)?;
        let dh = d / self.n_head;
        for (i, block) in self.blocks.iter().enumerate() {
            let qkv = block.self_qkv.forward(&block.self_ln.forward(&x)?)?; // (b, 1, 3d)
            let mut heads = Vec::with_capacity(b);
            for (j, s) in states.iter_mut().enumerate() {
                let qkv = qkv
                    .get(j)?
                    .reshape((1, 3, self.n_head, dh))?
                    .permute((1, 2, 0, 3))?; // (3, heads, 1, dh)
                let q = qkv.get(0)?.unsqueeze(0)?.contiguous()?;
                let (k, v) = s.self_kv[i].append(
                    &qkv.get(1)?.unsqueeze(0)?.contiguous()?,
                    &qkv.get(2)?.unsqueeze(0)?.contiguous()?,
                )?;
                let att = super::kernels::softmax_last_dim_owned(q.matmul(&k.t()?)?)?;
                heads.push(merge_heads(&att.matmul(&v.contiguous()?)?)?);
            }
            x = (x + block.self_out.forward(&Tensor::cat(&heads, 0)?)?)?;

            let q = block.cross_q.forward(&block.cross_ln.forward(&x)?)?; // (b, 1, d)
            let mut heads = Vec::with_capacity(b);
            for (j, s) in states.iter().enumerate() {
                let qj = split_heads(&q.narrow(0, j, 1)?, self.n_head)?;
                let att = super::kernels::softmax_last_dim_owned(qj.matmul(&s.cross_kt[i])?)?;
                heads.push(merge_heads(&att.matmul(&s.cross_v[i])?)?);
            }
            x = (x + block.cross_out.forward(&Tensor::cat(&heads, 0)?)?)?;

            let h = super::kernels::gelu_erf_owned(block.fc1.forward(&block.mlp_ln.forward(&x)?)?)?;
            x = (x + block.fc2.forward(&h)?)?;
        }
        for s in states.iter_mut() {
            s.position += 1;
        }
        self.logits(&self.ln.forward(&x)?.squeeze(1)?)
    }

    /// Vocabulary logits `(rows, n_vocab)` for hidden states `(rows, d)` (the tied output projection).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        match &self.logits_q8 {
            Some(q) => q.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.t()?),
        }
    }

    /// Logits of the last position of each sequence: `(batch, n_vocab)`.
    pub fn last_logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let n = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, n - 1, 1)?.squeeze(1)?)
    }

    /// Logits at position `i` of each sequence: `(batch, n_vocab)`.
    pub fn logits_at(&self, hidden: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        self.logits(&hidden.narrow(1, i, 1)?.squeeze(1)?)
    }
}

/// `(n, pos + n)` additive mask: new token `i` (at absolute position `pos + i`) sees keys `≤ pos + i`.
fn causal_mask(n: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = pos + n;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (n, total), device)?.to_dtype(DType::F32)
}
