//! The host backend: whisperd's CPU kernels over plain-memory caches. Each step feeds only the
//! new tokens; the cross-attention keys/values are computed once per audio window (`prepare`).
//! Shapes keep a batch dimension: several sequences decode together.

use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use whisperd_kernels::query::{
    audio_key_at, audio_keys_len, audio_rows, tile_audio_key_rows, tile_audio_keys, CacheRows,
};

use crate::model::linear::{Precision, Proj};
use crate::model::rowmatmul::{self, RowMatmul};

use crate::model::encoder::{layer_norm, linear, EncoderMath};
use crate::model::intgemm::IntLinear;
use crate::model::weights::Weights;
use crate::model::{ModelDims, ModelError};

use super::{row_spans, window_audio, AlignCapture, Block, DecoderBackend, SequenceState};

type DecoderBlock = Block<Proj>;

/// One layer's audio keys (per head in the kernels' tiles, `whisperd_kernels::query::audio_key_at`)
/// and values (`(heads, n_audio, dh)`). Every decoder step of every sequence reads all of them (18 MB per
/// step for tiny's 4 layers in f32), so q8 keeps them as fp16 bits: half the memory traffic.
enum AudioKv {
    F32 { kt: Vec<f32>, v: Vec<f32> },
    F16 { kt: Vec<u16>, v: Vec<u16> },
}

/// Per-window decoding state, plain memory so attention for one query row needs no tensor
/// ops: per layer the keys and values of the tokens fed so far (`(tokens, d)`, appended to), the
/// audio keys and values, and the next position.
///
/// Beam search runs several sequences (lanes) over one window: they share the audio keys/values
/// and the start sequence's keys/values (`shared`, frozen by [`HostState::share_prefix`]), and
/// each holds only the tokens it decoded itself, so [`HostState::fork`] copies those alone.
pub struct HostState {
    /// Per layer, the keys and values of a prefix held in common with other lanes.
    shared: Option<Arc<SharedPrefix>>,
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    cross: Arc<Vec<AudioKv>>,
    n_audio: usize,
    position: usize,
}

/// Keys and values of a prefix, per layer, read by every lane that forked from it.
struct SharedPrefix {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl HostState {
    /// A state with no audio, to stand in while the real one is away (see the scheduler).
    pub fn empty() -> Self {
        Self {
            shared: None,
            self_k: Vec::new(),
            self_v: Vec::new(),
            cross: Arc::new(Vec::new()),
            n_audio: 0,
            position: 0,
        }
    }
    /// Layer `layer`'s cached keys and values (shared prefix, then own rows).
    fn cache(&self, layer: usize) -> (CacheRows<'_>, CacheRows<'_>) {
        let (sk, sv): (&[f32], &[f32]) = match &self.shared {
            Some(p) => (&p.k[layer], &p.v[layer]),
            None => (&[], &[]),
        };
        (
            CacheRows {
                shared: sk,
                own: &self.self_k[layer],
            },
            CacheRows {
                shared: sv,
                own: &self.self_v[layer],
            },
        )
    }
}

impl SequenceState for HostState {
    fn position(&self) -> usize {
        self.position
    }
    fn n_audio(&self) -> usize {
        self.n_audio
    }
    /// Forget the tokens fed so far (keeps the window's cross-attention keys/values).
    fn reset(&mut self) {
        self.shared = None;
        self.self_k.iter_mut().for_each(Vec::clear);
        self.self_v.iter_mut().for_each(Vec::clear);
        self.position = 0;
    }
    /// Freeze the tokens fed so far into a prefix that forks share instead of copying. The
    /// attention arithmetic is unchanged (see `whisperd_kernels::query::CacheRows`).
    fn share_prefix(&mut self) {
        let mut k: Vec<Vec<f32>> = self.self_k.iter_mut().map(std::mem::take).collect();
        let mut v: Vec<Vec<f32>> = self.self_v.iter_mut().map(std::mem::take).collect();
        if let Some(old) = self.shared.take() {
            // Already shared: the new prefix is the old one followed by the own tokens.
            for (layer, (k, v)) in k.iter_mut().zip(&mut v).enumerate() {
                let mut pk = old.k[layer].clone();
                pk.append(k);
                *k = pk;
                let mut pv = old.v[layer].clone();
                pv.append(v);
                *v = pv;
            }
        }
        self.shared = Some(Arc::new(SharedPrefix { k, v }));
    }
    /// Another lane at this one's position: the shared prefix and audio are shared, the tokens
    /// this lane decoded itself are copied.
    fn fork(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            self_k: self.self_k.clone(),
            self_v: self.self_v.clone(),
            cross: self.cross.clone(),
            n_audio: self.n_audio,
            position: self.position,
        }
    }
}

/// The audio keys and values of every layer, computed once per window (f32 and AMX: two
/// matmuls over all layers' weights stacked, keys transposed, `Kᵀ = W_k·audioᵀ`; integers: the
/// keys a layer at a time, `audio·W_kᵀ`), keys then put in the attention kernels' tiles; values
/// `audio·W_vᵀ` `(t, layers·d)`. As the encoder's projections ([`EncoderMath`]): f32, bf16 on
/// AMX, or integers.
enum CrossKv {
    F32 {
        wk: Tensor,
        /// `(layers·d, 1)`: one bias per key row.
        bk: Tensor,
        v: Linear,
    },
    Amx {
        wk: crate::model::bf16::Bf16Rows,
        bk: Vec<f32>,
        v: crate::model::bf16::Linear,
    },
    /// Integers like the encoder's projections (`intgemm`): keys one layer at a time, tiled
    /// from their rows; values in one product.
    Int { k: Vec<IntLinear>, v: IntLinear },
}

impl CrossKv {
    fn new(w: &Weights, layers: usize, d: usize, math: EncoderMath) -> Result<Self, ModelError> {
        let proj = |kind: &str| -> Result<(Tensor, Tensor), ModelError> {
            let ls = (0..layers)
                .map(|i| {
                    linear(
                        w,
                        &format!("decoder.layers.{i}.encoder_attn.{kind}_proj"),
                        d,
                        d,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let weights: Vec<&Tensor> = ls.iter().map(|l| l.weight()).collect();
            let biases = ls
                .iter()
                .map(|l| {
                    l.bias()
                        .cloned()
                        .ok_or(candle_core::Error::Msg("no bias".into()))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok((Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?))
        };
        let (wk, bk) = proj("k")?;
        let (wv, bv) = proj("v")?;
        let v = Linear::new(wv, Some(bv));
        if math == EncoderMath::Int8Avx2 {
            // One layer's keys at a time: each `(t, d)` product is tiled straight from its rows
            // (`tile_audio_key_rows`), with a transient of one layer, not of all.
            let k = (0..layers)
                .map(|i| {
                    let rows = wk.narrow(0, i * d, d)?;
                    let bias = bk.narrow(0, i * d, d)?;
                    IntLinear::new(&Linear::new(rows, Some(bias)))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Ok(CrossKv::Int {
                k,
                v: IntLinear::new(&v)?,
            });
        }
        Ok(if math == EncoderMath::AmxBf16 {
            let n = wk.dim(0)?;
            CrossKv::Amx {
                wk: crate::model::bf16::Bf16Rows::new(
                    &wk.flatten_all()?.to_vec1::<f32>()?,
                    n,
                    d,
                    d,
                ),
                bk: bk.to_vec1::<f32>()?,
                v: crate::model::bf16::Linear::new(&v)?,
            }
        } else {
            CrossKv::F32 {
                bk: bk.unsqueeze(1)?,
                wk,
                v,
            }
        })
    }

    /// `audio` `(t, d)` → (each of the `layers` layers' keys in the attention kernels' tiles,
    /// `heads` heads of them; `V` `(t, layers·d)`) as plain vectors.
    fn compute(
        &self,
        audio: &Tensor,
        heads: usize,
        layers: usize,
    ) -> candle_core::Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let (t, d) = audio.dims2()?;
        let dh = d / heads.max(1);
        // `Kᵀ` `(layers·d, t)` → each layer's tiles, layers in parallel.
        let tile_layers = |kt: &[f32]| -> Vec<Vec<f32>> {
            (0..layers)
                .into_par_iter()
                .map(|i| tile_audio_keys(&kt[i * d * t..][..d * t], heads, dh, t))
                .collect()
        };
        match self {
            CrossKv::F32 { wk, bk, v } => {
                let kt = wk.matmul(&audio.t()?)?.broadcast_add(bk)?;
                let vals = v.forward(audio)?;
                Ok((
                    tile_layers(&kt.flatten_all()?.to_vec1()?),
                    vals.flatten_all()?.to_vec1()?,
                ))
            }
            CrossKv::Int { k, v } => {
                let x = audio.flatten_all()?.to_vec1::<f32>()?;
                // One layer's keys `(t, d)` at a time, tiled straight from its rows: a transient
                // of one layer, and no transposed copy.
                let keys = k
                    .iter()
                    .map(|kl| {
                        Ok(tile_audio_key_rows(
                            &kl.forward_rows(&x, t)?,
                            d,
                            heads,
                            dh,
                            t,
                        ))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok((keys, v.forward_rows(&x, t)?))
            }
            CrossKv::Amx { wk, bk, v } => {
                let x = audio.flatten_all()?.to_vec1::<f32>()?;
                let mut kt = crate::model::bf16::matmul(
                    wk,
                    &crate::model::bf16::PackedB::from_rows(&x, t, d, d),
                );
                kt.par_chunks_mut(t)
                    .zip(bk)
                    .for_each(|(row, b)| row.iter_mut().for_each(|x| *x += b));
                let vals = v.forward(audio)?;
                Ok((tile_layers(&kt), vals.flatten_all()?.to_vec1()?))
            }
        }
    }
}

/// Each row's sequence, from the sequences' (first row, row count) spans.
fn sequence_of_rows(spans: &[(usize, usize)], rows: usize) -> Vec<usize> {
    let mut seq_of = vec![0usize; rows];
    for (seq, &(first, n)) in spans.iter().enumerate() {
        seq_of[first..first + n].fill(seq);
    }
    seq_of
}

/// f32 → fp16 bits (round to nearest), vectorized by `half` where the CPU has F16C.
fn to_f16_bits(x: &[f32]) -> Vec<u16> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut bits = vec![0u16; x.len()];
    bits.reinterpret_cast_mut::<half::f16>()
        .convert_from_f32_slice(x);
    bits
}

/// Layer `layer`'s scaled cross-attention queries `q` `(rows, d)` → for each alignment head of
/// this layer, softmax over the first `n_frames` audio positions of `q·k`, into `cap`.
fn record(
    cap: &mut AlignCapture,
    layer: usize,
    q: &[f32],
    rows: &[(usize, u32)],
    spans: &[(usize, usize)],
    states: &[&mut HostState],
    n_head: usize,
) {
    let d = q.len() / rows.len().max(1);
    let dh = d / n_head;
    for hi in 0..cap.heads.len() {
        let (l, h) = cap.heads[hi];
        if l != layer {
            continue;
        }
        let per_row: Vec<Vec<f32>> = (0..rows.len())
            .into_par_iter()
            .map(|r| {
                let seq = rows[r].0;
                let st = &states[seq];
                let f = cap.n_frames[seq];
                let qh = &q[r * d + h * dh..][..dh];
                let t = st.n_audio;
                let mut scores = vec![0f32; f];
                let head = h * audio_keys_len(dh, t);
                match &st.cross[layer] {
                    AudioKv::F32 { kt, .. } => {
                        for (d, &qd) in qh.iter().enumerate() {
                            for (j, s) in scores.iter_mut().enumerate() {
                                *s += qd * kt[head + audio_key_at(dh, d, j)];
                            }
                        }
                    }
                    AudioKv::F16 { kt, .. } => {
                        for (d, &qd) in qh.iter().enumerate() {
                            for (j, s) in scores.iter_mut().enumerate() {
                                let k = kt[head + audio_key_at(dh, d, j)];
                                *s += qd * half::f16::from_bits(k).to_f32();
                            }
                        }
                    }
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                scores.iter_mut().for_each(|s| {
                    *s = (*s - max).exp();
                    sum += *s;
                });
                scores.iter_mut().for_each(|s| *s /= sum);
                scores
            })
            .collect();
        for (r, w) in per_row.into_iter().enumerate() {
            let seq = rows[r].0;
            cap.put(seq, hi, r - spans[seq].0, &w);
        }
    }
}

pub struct HostDecoder {
    /// Every layer's audio keys/values, once per window.
    cross_kv: CrossKv,
    /// Token embeddings, exact (held as fp16 when every value is fp16, as in the shipped
    /// models); in f32 also the tied output projection.
    embed: RowMatmul,
    /// q8: the output projection in int8.
    logits_q8: Option<RowMatmul>,
    /// Where the activations' tensors are made: the CPU (the row kernels read host memory).
    device: candle_core::Device,
    positions: Tensor,
    blocks: Vec<DecoderBlock>,
    ln: LayerNorm,
    n_head: usize,
    n_ctx: usize,
    precision: Precision,
}

impl HostDecoder {
    /// `math`: how the per-window cross-attention keys/values compute (as the encoder's
    /// projections).
    pub fn new(
        w: &Weights,
        dims: &ModelDims,
        precision: Precision,
        math: EncoderMath,
    ) -> Result<Self, ModelError> {
        let d = dims.n_text_state;
        let blocks = (0..dims.n_text_layer)
            .map(|i| Ok(Block::read(w, dims, i)?.map(|l| Proj::new(l, precision))?))
            .collect::<Result<Vec<DecoderBlock>, ModelError>>()?;
        // As stored (fp16 in published models): the row kernels keep fp16 as it is.
        let embed_tokens = w.take_stored("decoder.embed_tokens.weight", &[dims.n_vocab, d])?;
        let device = embed_tokens.device().clone();
        let embed = rowmatmul::from_tensors(&embed_tokens, None)?;
        let logits_q8 = match precision {
            Precision::Q8 => Some(rowmatmul::quantized_from_tensors(&embed_tokens, None)?),
            Precision::F32 => None,
        };
        tracing::debug!(
            fp16 = embed.is_f16(),
            ?precision,
            "decoder token embedding / output projection"
        );
        Ok(Self {
            cross_kv: CrossKv::new(w, dims.n_text_layer, d, math)?,
            embed,
            logits_q8,
            device,
            positions: w.take("decoder.embed_positions.weight", &[dims.n_text_ctx, d])?,
            blocks,
            ln: layer_norm(w, "decoder.layer_norm", d)?,
            n_head: dims.n_text_head,
            n_ctx: dims.n_text_ctx,
            precision,
        })
    }
}

impl DecoderBackend for HostDecoder {
    type State = HostState;

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    fn n_head(&self) -> usize {
        self.n_head
    }

    /// Largest number of tokens one sequence may hold.
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Compute the cross-attention keys/values of every layer for one window's `audio`
    /// `(1, n_audio, d)`.
    fn prepare(&self, audio: &Tensor) -> candle_core::Result<HostState> {
        let audio = window_audio(audio)?;
        let (t, d) = audio.dims2()?;
        let dh = d / self.n_head;
        let layers = self.blocks.len();
        let (keys, v_all) = self.cross_kv.compute(&audio, self.n_head, layers)?;
        if keys.len() != layers {
            candle_core::bail!("audio keys of {} layers for {layers}", keys.len());
        }
        // Per layer: its keys (tiled per head); its columns of V regrouped per head
        // `(heads, t, dh)`, layers in parallel.
        let cross: Vec<AudioKv> = keys
            .into_par_iter()
            .enumerate()
            .map(|(i, kt)| {
                let mut v = Vec::with_capacity(t * d);
                for h in 0..self.n_head {
                    for row in v_all.chunks_exact(layers * d) {
                        v.extend_from_slice(&row[i * d + h * dh..][..dh]);
                    }
                }
                match self.precision {
                    Precision::F32 => AudioKv::F32 { kt, v },
                    Precision::Q8 => AudioKv::F16 {
                        kt: to_f16_bits(&kt),
                        v: to_f16_bits(&v),
                    },
                }
            })
            .collect();
        let cap = 16 * d;
        Ok(HostState {
            self_k: (0..self.blocks.len())
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            self_v: (0..self.blocks.len())
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            shared: None,
            cross: Arc::new(cross),
            n_audio: t,
            position: 0,
        })
    }

    /// The decoder over `rows` of (sequence, token): consecutive rows of one sequence are
    /// consecutive positions. Returns the final hidden states `(rows, d)`.
    /// `row_kernel`: every projection on the row kernel, whatever the row count — decoder steps
    /// (one row per sequence, however many sequences are batched) and the alignment pass, so
    /// that batched equals alone and no step converts weights for a GEMM; a prompt's prefill
    /// takes the GEMM beyond 32 rows.
    fn run(
        &self,
        states: &mut [&mut HostState],
        rows: &[(usize, u32)],
        row_kernel: bool,
        mut capture: Option<&mut AlignCapture>,
    ) -> candle_core::Result<Tensor> {
        let rk = row_kernel;
        let device = &self.device;
        let (positions, spans) = row_spans(states, rows, self.n_ctx)?;
        if states.iter().any(|s| s.cross.len() != self.blocks.len()) {
            candle_core::bail!("decoder state was not prepared for this model");
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        let Some(v) = self.embed.rows(&ids) else {
            candle_core::bail!("token id out of the vocabulary");
        };
        let emb = Tensor::from_vec(v, (ids.len(), self.embed.in_features()), device)?;
        let pos = self
            .positions
            .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
        let mut x = (emb + pos)?; // (rows, d)
        let (n_rows, d) = x.dims2()?;
        let mut att = vec![0f32; n_rows * d];
        for (i, block) in self.blocks.iter().enumerate() {
            // Self-attention: append each row's key/value, then attend over the cache.
            let qkv = block
                .self_qkv
                .forward_with(&block.self_ln.forward(&x)?, rk)?
                .flatten_all()?
                .to_vec1::<f32>()?; // (rows, 3d)
            let mut q = vec![0f32; n_rows * d];
            for r in 0..n_rows {
                let row = &qkv[r * 3 * d..][..3 * d];
                q[r * d..][..d].copy_from_slice(&row[..d]);
                let st = &mut states[rows[r].0];
                st.self_k[i].extend_from_slice(&row[d..2 * d]);
                st.self_v[i].extend_from_slice(&row[2 * d..]);
            }
            self.attend_each(states, &spans, &q, d, &mut att, |qa, st, row, h, out| {
                let (k, v) = st.cache(i);
                qa.cache_head(row, h, k, v, st.position, out)
            });
            let y = Tensor::from_slice(&att, (n_rows, d), device)?;
            x = (x + block.self_out.forward_with(&y, rk)?)?;

            // Cross-attention to the audio features prepared once for this window.
            let q = block
                .cross_q
                .forward_with(&block.cross_ln.forward(&x)?, rk)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if let Some(cap) = capture.as_deref_mut() {
                record(cap, i, &q, rows, &spans, states, self.n_head);
            }
            self.attend_audio(states, &spans, &q, d, &mut att, i);
            let y = Tensor::from_slice(&att, (n_rows, d), device)?;
            x = (x + block.cross_out.forward_with(&y, rk)?)?;

            let h = crate::model::kernels::gelu_erf_owned(
                block.fc1.forward_with(&block.mlp_ln.forward(&x)?, rk)?,
            )?;
            x = (x + block.fc2.forward_with(&h, rk)?)?;
        }
        for (seq, st) in states.iter_mut().enumerate() {
            st.position += spans[seq].1;
        }
        self.ln.forward(&x)
    }

    /// Vocabulary logits `(rows, n_vocab)` for hidden states `(rows, d)` (the tied output projection).
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let mm = self.logits_q8.as_ref().unwrap_or(&self.embed);
        let (n, _) = hidden.dims2()?;
        let x = hidden.flatten_all()?.to_vec1::<f32>()?;
        Tensor::from_vec(mm.forward(&x, n), (n, mm.out_features()), hidden.device())
    }
}

impl HostDecoder {
    /// Runs one attention kind for every sequence over its own rows of `q` (`(rows, d)`, rows of a
    /// sequence consecutive as `spans` says), writing the same rows of `out`. Every (row, head)
    /// of every sequence is one task of a single parallel region: one fork-join per attention
    /// instead of one per sequence (the thread wake-ups of 8 sequences × 8 attentions were
    /// ~15 % of a batched step).
    fn attend_each(
        &self,
        states: &[&mut HostState],
        spans: &[(usize, usize)],
        q: &[f32],
        d: usize,
        out: &mut [f32],
        attend: impl Fn(&crate::model::kernels::QueryAttention, &HostState, usize, usize, &mut [f32])
            + Sync,
    ) {
        let (heads, dh) = (self.n_head, d / self.n_head);
        let seq_of = sequence_of_rows(spans, out.len() / d);
        let run = |task: usize, o: &mut [f32]| {
            let (row, h) = (task / heads, task % heads);
            let seq = seq_of[row];
            let (first, n) = spans[seq];
            let qa = crate::model::kernels::QueryAttention {
                q: &q[first * d..][..n * d],
                heads,
                dh,
            };
            attend(&qa, states[seq], row - first, h, o);
        };
        out.par_chunks_mut(dh)
            .enumerate()
            .for_each(|(task, o)| run(task, o));
    }

    /// Cross-attention of every row to its window's audio (layer `layer`). Consecutive rows
    /// over the same audio — a beam search's lanes, a start sequence's tokens — form one group
    /// (at most `AUDIO_GROUP` rows) that reads each head's keys and values once
    /// (`whisperd_kernels::query::audio_rows`; each row's numbers are those it gets alone).
    /// Every (group, head) is one task of one parallel region.
    fn attend_audio(
        &self,
        states: &[&mut HostState],
        spans: &[(usize, usize)],
        q: &[f32],
        d: usize,
        out: &mut [f32],
        layer: usize,
    ) {
        const AUDIO_GROUP: usize = 8;
        let (heads, dh) = (self.n_head, d / self.n_head);
        let seq_of = sequence_of_rows(spans, out.len() / d);
        let same_audio = |a: usize, b: usize| {
            let (x, y) = (&states[seq_of[a]], &states[seq_of[b]]);
            Arc::ptr_eq(&x.cross, &y.cross) && x.n_audio == y.n_audio
        };
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for r in 0..seq_of.len() {
            match groups.last_mut() {
                Some((first, n)) if *n < AUDIO_GROUP && same_audio(*first, r) => *n += 1,
                _ => groups.push((r, 1)),
            }
        }
        let results: Vec<Vec<f32>> = (0..groups.len() * heads)
            .into_par_iter()
            .map(|task| {
                let ((first, n), h) = (groups[task / heads], task % heads);
                let st = &states[seq_of[first]];
                let qs: Vec<&[f32]> = (first..first + n)
                    .map(|r| &q[r * d + h * dh..][..dh])
                    .collect();
                let mut o = vec![0f32; n * dh];
                let t = st.n_audio;
                let (kblock, block) = (audio_keys_len(dh, t), dh * t);
                match &st.cross[layer] {
                    AudioKv::F32 { kt, v } => audio_rows(
                        &qs,
                        &kt[h * kblock..][..kblock],
                        &v[h * block..][..block],
                        t,
                        &mut o,
                    ),
                    AudioKv::F16 { kt, v } => audio_rows(
                        &qs,
                        &kt[h * kblock..][..kblock],
                        &v[h * block..][..block],
                        t,
                        &mut o,
                    ),
                }
                o
            })
            .collect();
        for (task, o) in results.iter().enumerate() {
            let ((first, n), h) = (groups[task / heads], task % heads);
            for i in 0..n {
                out[(first + i) * d + h * dh..][..dh].copy_from_slice(&o[i * dh..][..dh]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Layout;
    use candle_core::Device;
    use std::collections::HashMap;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Audio keys/values weights of `layers` layers of width `d` (each build takes them).
    fn cross_weights(layers: usize, d: usize) -> candle_core::Result<Weights> {
        let mut m = HashMap::new();
        for i in 0..layers {
            for (j, kind) in ["k", "v"].into_iter().enumerate() {
                let p = format!("decoder.layers.{i}.encoder_attn.{kind}_proj");
                let w: Vec<f32> = values(d * d, 2 * i + j).iter().map(|v| v * 0.1).collect();
                m.insert(
                    format!("{p}.weight"),
                    Tensor::from_vec(w, (d, d), &Device::Cpu)?,
                );
                let b = values(d, 10 + 2 * i + j);
                m.insert(format!("{p}.bias"), Tensor::from_vec(b, d, &Device::Cpu)?);
            }
        }
        Ok(Weights::new(Layout::Ct2, "test".into(), m, None, None))
    }

    /// The integer keys/values are the f32 ones within the quantization error, in the same
    /// layout (keys tiled per layer — the integer keys tiled from rows, the f32 ones from `Kᵀ` —
    /// values time-major).
    #[test]
    fn integer_audio_keys_values_match_f32() -> Result<(), Box<dyn std::error::Error>> {
        if !crate::model::intgemm::available() {
            return Ok(());
        }
        let (layers, d, t) = (3, 64, 45);
        let audio = Tensor::from_vec(values(t * d, 99), (t, d), &Device::Cpu)?;
        let heads = 2;
        let (kf, vf) = CrossKv::new(&cross_weights(layers, d)?, layers, d, EncoderMath::F32)?
            .compute(&audio, heads, layers)?;
        let int = CrossKv::new(&cross_weights(layers, d)?, layers, d, EncoderMath::Int8Avx2)?;
        assert!(matches!(int, CrossKv::Int { .. }));
        let (ki, vi) = int.compute(&audio, heads, layers)?;
        let (kf, ki) = (kf.concat(), ki.concat());
        let tiled = audio_keys_len(d / heads, t) * heads;
        assert_eq!((kf.len(), vf.len()), (layers * tiled, t * layers * d));
        assert_eq!((ki.len(), vi.len()), (kf.len(), vf.len()));
        let scale = kf.iter().chain(&vf).fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            scale > 1.0,
            "values large enough that a misplaced one shows"
        );
        for (name, a, b) in [("keys", &kf, &ki), ("values", &vf, &vi)] {
            let worst = a
                .iter()
                .zip(b.iter())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst < 0.01 * scale,
                "{name}: off by {worst} (scale {scale})"
            );
        }
        Ok(())
    }
}
