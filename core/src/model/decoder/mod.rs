//! Whisper's text decoder with a key/value cache: each step feeds only the new tokens, and the
//! cross-attention keys/values are computed once per audio window (`prepare`).
//!
//! Two backends compute it, behind one trait ([`DecoderBackend`], with its own per-sequence
//! state type):
//! - [`host`]: the CPU's — plain-memory caches read by whisperd's own kernels (row matmuls,
//!   per-query attention), f32 or q8;
//! - [`device`]: candle ops end to end — caches, activations and logits stay on the model's
//!   device (a GPU) from the first layer of a step to the logits. It also runs on candle's CPU
//!   device, which is how the tests compare it with the host backend token for token.
//!
//! [`TextDecoder`] is the one chosen at load ([`super::Numerics`]'s `decoder`) and
//! [`DecoderState`] the per-sequence state it hands out; decoding (`crate::decode`) and the
//! scheduler see only those two. The forward/step/alignment logic above a backend's `run` is
//! written once, here.

pub(crate) mod device;
pub(crate) mod host;

use candle_core::Tensor;
use candle_nn::{LayerNorm, Linear};

use super::encoder::{fused_qkv, layer_norm, linear};
use super::linear::Precision;
use super::weights::Weights;
use super::{ModelDims, ModelError};

pub use device::DeviceDecoder;
pub use host::HostDecoder;

/// One decoder layer's weights; `P` is how a backend holds a projection (a candle `Linear`,
/// the host's row-kernel `Proj`).
pub(crate) struct Block<P> {
    pub self_ln: LayerNorm,
    /// q (pre-scaled by head_dim^-0.5), k and v in one projection.
    pub self_qkv: P,
    pub self_out: P,
    pub cross_ln: LayerNorm,
    /// The cross-attention's queries, pre-scaled like the self-attention's.
    pub cross_q: P,
    pub cross_out: P,
    pub mlp_ln: LayerNorm,
    pub fc1: P,
    pub fc2: P,
}

impl Block<Linear> {
    /// Layer `i` from `w` (its cross-attention keys/values are the backend's to read).
    pub fn read(w: &Weights, dims: &ModelDims, i: usize) -> Result<Self, ModelError> {
        let d = dims.n_text_state;
        let p = format!("decoder.layers.{i}");
        let scale = ((d / dims.n_text_head) as f64).powf(-0.5);
        let q = linear(w, &format!("{p}.encoder_attn.q_proj"), d, d)?;
        Ok(Block {
            self_ln: layer_norm(w, &format!("{p}.self_attn_layer_norm"), d)?,
            self_qkv: fused_qkv(w, &format!("{p}.self_attn"), d, dims.n_text_head)?,
            self_out: linear(w, &format!("{p}.self_attn.out_proj"), d, d)?,
            cross_ln: layer_norm(w, &format!("{p}.encoder_attn_layer_norm"), d)?,
            cross_q: Linear::new(
                (q.weight() * scale)?,
                q.bias().map(|b| b * scale).transpose()?,
            ),
            cross_out: linear(w, &format!("{p}.encoder_attn.out_proj"), d, d)?,
            mlp_ln: layer_norm(w, &format!("{p}.final_layer_norm"), d)?,
            fc1: linear(w, &format!("{p}.fc1"), 4 * d, d)?,
            fc2: linear(w, &format!("{p}.fc2"), d, 4 * d)?,
        })
    }

    /// The same layer with each projection converted by `f`.
    pub fn map<Q>(
        self,
        f: impl Fn(Linear) -> candle_core::Result<Q>,
    ) -> candle_core::Result<Block<Q>> {
        Ok(Block {
            self_ln: self.self_ln,
            self_qkv: f(self.self_qkv)?,
            self_out: f(self.self_out)?,
            cross_ln: self.cross_ln,
            cross_q: f(self.cross_q)?,
            cross_out: f(self.cross_out)?,
            mlp_ln: self.mlp_ln,
            fc1: f(self.fc1)?,
            fc2: f(self.fc2)?,
        })
    }
}

/// One window's audio features `(1, n_audio, d)` → `(n_audio, d)`; backends prepare one
/// window at a time.
fn window_audio(audio: &Tensor) -> candle_core::Result<Tensor> {
    let b = audio.dims3()?.0;
    if b != 1 {
        candle_core::bail!("prepare takes one window at a time, got {b}");
    }
    audio.squeeze(0)
}

/// Which backend decodes (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderPath {
    /// whisperd's CPU kernels over host memory.
    Host,
    /// candle ops on the model's device.
    Device,
}

/// One sequence's state in a backend: its cached keys/values and position, against one
/// window's audio.
pub(crate) trait SequenceState: Sized {
    fn position(&self) -> usize;
    /// Audio positions of its window.
    fn n_audio(&self) -> usize;
    /// Forget the tokens fed so far (keeps the window's audio keys/values).
    fn reset(&mut self);
    /// Freeze the tokens fed so far into a prefix that forks share instead of copying.
    fn share_prefix(&mut self);
    /// Another lane at this one's position, sharing the audio and the shared prefix.
    fn fork(&self) -> Self;
}

/// What a decoder backend computes. Everything above `run` (feeding a sequence, a batched
/// step, the alignment pass) is provided once for both backends.
pub(crate) trait DecoderBackend {
    type State: SequenceState;

    fn n_layers(&self) -> usize;
    fn n_head(&self) -> usize;
    fn n_ctx(&self) -> usize;

    /// Audio keys/values of every layer for one window's `audio` `(1, n_audio, d)`.
    fn prepare(&self, audio: &Tensor) -> candle_core::Result<Self::State>;

    /// The decoder over `rows` of (sequence, token); consecutive rows of one sequence are
    /// consecutive positions. Returns the final hidden states `(rows, d)`; each state's cache
    /// and position grow by its rows. `row_kernel`: decoder steps and the alignment pass, whose
    /// per-row numbers must not depend on the other rows (the host's row kernels). `capture`
    /// collects the alignment heads' cross-attention.
    fn run(
        &self,
        states: &mut [&mut Self::State],
        rows: &[(usize, u32)],
        row_kernel: bool,
        capture: Option<&mut AlignCapture>,
    ) -> candle_core::Result<Tensor>;

    /// Vocabulary logits `(rows, n_vocab)` for hidden states `(rows, d)`.
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor>;

    /// Feed `tokens` `(1, n)` to one sequence; hidden states `(1, n, d)`.
    fn forward(&self, tokens: &Tensor, state: &mut Self::State) -> candle_core::Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        if b != 1 {
            candle_core::bail!("forward feeds one sequence at a time, got {b}");
        }
        let tokens = tokens.flatten_all()?.to_vec1::<u32>()?;
        let rows: Vec<(usize, u32)> = tokens.iter().map(|&t| (0, t)).collect();
        let x = self.run(&mut [state], &rows, false, None)?;
        x.reshape((1, n, ()))
    }

    /// One token for each of several sequences; `(batch, n_vocab)` logits.
    fn step(&self, states: &mut [&mut Self::State], tokens: &[u32]) -> candle_core::Result<Tensor> {
        if states.is_empty() || tokens.len() != states.len() {
            candle_core::bail!(
                "step needs one token per sequence ({} for {})",
                tokens.len(),
                states.len()
            );
        }
        let rows: Vec<(usize, u32)> = tokens.iter().copied().enumerate().collect();
        self.logits(&self.run(states, &rows, true, None)?)
    }

    /// See [`TextDecoder::align`].
    fn align(
        &self,
        states: &mut [&mut Self::State],
        reqs: &[AlignRequest],
        heads: &[(usize, usize)],
    ) -> candle_core::Result<Vec<AlignOutput>> {
        if states.len() != reqs.len() {
            candle_core::bail!("align needs one request per sequence");
        }
        if let Some(&(l, h)) = heads
            .iter()
            .find(|&&(l, h)| l >= self.n_layers() || h >= self.n_head())
        {
            candle_core::bail!("alignment head ({l}, {h}) is not in this decoder");
        }
        let mut rows = Vec::new();
        let mut first_row = Vec::with_capacity(reqs.len());
        let mut n_frames = Vec::with_capacity(reqs.len());
        for (seq, (st, req)) in states.iter_mut().zip(reqs).enumerate() {
            if req.tokens.is_empty() || req.tokens.len() > self.n_ctx() {
                candle_core::bail!(
                    "alignment needs 1 to {} tokens, got {}",
                    self.n_ctx(),
                    req.tokens.len()
                );
            }
            if let Some(&(r, _)) = req.targets.iter().find(|t| t.0 >= req.tokens.len()) {
                candle_core::bail!("alignment target row {r} is past the tokens");
            }
            st.reset();
            first_row.push(rows.len());
            n_frames.push(req.n_frames.clamp(1, st.n_audio().max(1)));
            rows.extend(req.tokens.iter().map(|&t| (seq, t)));
        }
        let mut cap = AlignCapture {
            heads: heads.to_vec(),
            weights: reqs
                .iter()
                .zip(&n_frames)
                .map(|(r, &f)| vec![vec![0f32; r.tokens.len() * f]; heads.len()])
                .collect(),
            n_frames,
        };
        let hidden = self.run(states, &rows, true, Some(&mut cap))?;
        let picked: Vec<u32> = reqs
            .iter()
            .zip(&first_row)
            .flat_map(|(r, &f)| r.targets.iter().map(move |&(row, _)| (f + row) as u32))
            .collect();
        let mut probs = Vec::with_capacity(picked.len());
        if !picked.is_empty() {
            let picked = Tensor::new(picked.as_slice(), hidden.device())?;
            let logits = self
                .logits(&hidden.index_select(&picked, 0)?)?
                .to_vec2::<f32>()?;
            let mut it = logits.iter();
            for r in reqs {
                let mut p = Vec::with_capacity(r.targets.len());
                for &(_, token) in &r.targets {
                    let Some(row) = it.next() else {
                        candle_core::bail!("missing alignment logits");
                    };
                    let row = &row[..r.vocab_limit.min(row.len())];
                    let lse = super::kernels::log_sum_exp(row);
                    p.push(row.get(token as usize).map_or(0.0, |&l| (l - lse).exp()));
                }
                probs.push(p);
            }
        } else {
            probs.resize(reqs.len(), Vec::new());
        }
        Ok(cap
            .weights
            .into_iter()
            .zip(cap.n_frames)
            .zip(probs)
            .map(|((weights, n_frames), probs)| AlignOutput {
                weights,
                n_frames,
                probs,
            })
            .collect())
    }
}

/// One sequence's alignment pass (word timestamps): `tokens` fed from position 0 against the
/// window's audio; the cross-attention weights are read over the first `n_frames` audio positions
/// (the window's audio, not its padding); `targets` are the (row, token) pairs whose probability
/// is wanted, a softmax over the first `vocab_limit` logits of that row (the text tokens).
#[derive(Debug, Clone)]
pub struct AlignRequest {
    pub tokens: Vec<u32>,
    pub n_frames: usize,
    pub targets: Vec<(usize, u32)>,
    pub vocab_limit: usize,
}

/// What an alignment pass returns for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignOutput {
    /// Per alignment head, `(tokens, n_frames)` row-major: each token's attention over the first
    /// `n_frames` audio positions, a softmax over those positions (OpenAI's `timing.py`).
    pub weights: Vec<Vec<f32>>,
    pub n_frames: usize,
    /// The probability of each target token.
    pub probs: Vec<f32>,
}

/// Collects the alignment heads' cross-attention weights during a backend's `run`.
pub(crate) struct AlignCapture {
    /// `(layer, head)` pairs.
    pub heads: Vec<(usize, usize)>,
    /// Per sequence, the audio positions read.
    pub n_frames: Vec<usize>,
    /// Per sequence, per head, `(tokens, n_frames)`.
    pub weights: Vec<Vec<Vec<f32>>>,
}

impl AlignCapture {
    /// Store sequence `seq`'s weights for head `head_index`, row `local` (its `n_frames`).
    fn put(&mut self, seq: usize, head_index: usize, local: usize, w: &[f32]) {
        let f = self.n_frames[seq];
        self.weights[seq][head_index][local * f..][..f].copy_from_slice(&w[..f]);
    }
}

/// The decoder, on the backend chosen at load.
pub enum TextDecoder {
    Host(Box<HostDecoder>),
    Device(DeviceDecoder),
}

/// One sequence's decoding state (see [`TextDecoder::prepare`]), of the decoder's backend.
///
/// Beam search runs several sequences (lanes) over one window: they share the audio keys/values
/// and the start sequence's keys/values ([`DecoderState::share_prefix`]), and
/// [`DecoderState::fork`] copies only what a lane decoded itself.
pub struct DecoderState(State);

enum State {
    Host(host::HostState),
    Device(device::DeviceState),
}

impl DecoderState {
    pub fn position(&self) -> usize {
        match &self.0 {
            State::Host(s) => s.position(),
            State::Device(s) => s.position(),
        }
    }
    /// A state with no audio, to stand in while the real one is away (see the scheduler).
    pub fn empty() -> Self {
        Self(State::Host(host::HostState::empty()))
    }
    /// Forget the tokens fed so far (keeps the window's cross-attention keys/values).
    pub fn reset(&mut self) {
        match &mut self.0 {
            State::Host(s) => s.reset(),
            State::Device(s) => s.reset(),
        }
    }
    /// Freeze the tokens fed so far into a prefix that forks share instead of copying. The
    /// arithmetic is unchanged.
    pub fn share_prefix(&mut self) {
        match &mut self.0 {
            State::Host(s) => s.share_prefix(),
            State::Device(s) => s.share_prefix(),
        }
    }
    /// Another lane at this one's position: the shared prefix and audio are shared, the tokens
    /// this lane decoded itself are copied.
    pub fn fork(&self) -> Self {
        Self(match &self.0 {
            State::Host(s) => State::Host(s.fork()),
            State::Device(s) => State::Device(s.fork()),
        })
    }
}

/// Each row's position; each sequence's (first row, row count).
type RowSpans = (Vec<u32>, Vec<(usize, usize)>);

/// Each row's position, and each sequence's (first row, row count), for `rows` of (sequence,
/// token) fed to `states`; an error for a row of an unknown sequence or past `n_ctx`.
fn row_spans<S: SequenceState>(
    states: &[&mut S],
    rows: &[(usize, u32)],
    n_ctx: usize,
) -> candle_core::Result<RowSpans> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut spans: Vec<(usize, usize)> = vec![(0, 0); states.len()];
    for (r, &(seq, _)) in rows.iter().enumerate() {
        let Some(st) = states.get(seq) else {
            candle_core::bail!("row for unknown sequence {seq}");
        };
        if spans[seq].1 == 0 {
            spans[seq].0 = r;
        }
        let p = st.position() + spans[seq].1;
        if p >= n_ctx {
            candle_core::bail!("decoder context of {n_ctx} tokens exceeded");
        }
        spans[seq].1 += 1;
        positions.push(p as u32);
    }
    Ok((positions, spans))
}

fn wrong_backend() -> candle_core::Error {
    candle_core::Error::Msg("decoder state was not prepared for this model".into())
}

/// The host states behind `states`, or an error if one is another backend's.
fn host_states<'a>(
    states: &'a mut [&mut DecoderState],
) -> candle_core::Result<Vec<&'a mut host::HostState>> {
    states
        .iter_mut()
        .map(|s| match &mut s.0 {
            State::Host(h) => Ok(h),
            State::Device(_) => Err(wrong_backend()),
        })
        .collect()
}

fn device_states<'a>(
    states: &'a mut [&mut DecoderState],
) -> candle_core::Result<Vec<&'a mut device::DeviceState>> {
    states
        .iter_mut()
        .map(|s| match &mut s.0 {
            State::Device(h) => Ok(h),
            State::Host(_) => Err(wrong_backend()),
        })
        .collect()
}

impl TextDecoder {
    /// Build the `path` backend from `w`. `math`: how the host computes the per-window audio
    /// keys/values (as the encoder's projections).
    pub fn new(
        w: &Weights,
        dims: &ModelDims,
        precision: Precision,
        path: DecoderPath,
        math: crate::model::encoder::EncoderMath,
    ) -> Result<Self, ModelError> {
        Ok(match path {
            DecoderPath::Host => Self::Host(Box::new(HostDecoder::new(w, dims, precision, math)?)),
            DecoderPath::Device => Self::Device(DeviceDecoder::new(w, dims)?),
        })
    }

    pub fn path(&self) -> DecoderPath {
        match self {
            Self::Host(_) => DecoderPath::Host,
            Self::Device(_) => DecoderPath::Device,
        }
    }

    /// Largest number of tokens one sequence may hold.
    pub fn n_ctx(&self) -> usize {
        match self {
            Self::Host(d) => d.n_ctx(),
            Self::Device(d) => d.n_ctx(),
        }
    }

    /// Compute the cross-attention keys/values of every layer for one window's `audio`
    /// `(1, n_audio, d)`: a fresh state.
    pub fn prepare(&self, audio: &Tensor) -> candle_core::Result<DecoderState> {
        Ok(DecoderState(match self {
            Self::Host(d) => State::Host(d.prepare(audio)?),
            Self::Device(d) => State::Device(d.prepare(audio)?),
        }))
    }

    /// Feed `tokens` `(1, n)` to one sequence at its position; returns the final hidden states
    /// `(1, n, d)` (see `logits`). The cache grows by `n`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
    ) -> candle_core::Result<Tensor> {
        match (self, &mut state.0) {
            (Self::Host(d), State::Host(s)) => d.forward(tokens, s),
            (Self::Device(d), State::Device(s)) => d.forward(tokens, s),
            _ => Err(wrong_backend()),
        }
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
        // On a compute-pool thread (`on_compute_pool`): the host step is ~35 parallel loops.
        super::on_compute_pool(|| match self {
            Self::Host(d) => d.step(&mut host_states(states)?, tokens),
            Self::Device(d) => d.step(&mut device_states(states)?, tokens),
        })
    }

    /// The alignment pass of word timestamps for several sequences at once: each state is reset
    /// and fed its request's tokens from position 0 against its own audio; returns, per request,
    /// the cross-attention weights of `heads` (`(layer, head)` pairs) and the requested token
    /// probabilities. A sequence's numbers do not depend on the others in the batch.
    pub fn align(
        &self,
        states: &mut [&mut DecoderState],
        reqs: &[AlignRequest],
        heads: &[(usize, usize)],
    ) -> candle_core::Result<Vec<AlignOutput>> {
        match self {
            Self::Host(d) => d.align(&mut host_states(states)?, reqs, heads),
            Self::Device(d) => d.align(&mut device_states(states)?, reqs, heads),
        }
    }

    /// Vocabulary logits `(rows, n_vocab)` for hidden states `(rows, d)` (the tied output
    /// projection).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Host(d) => d.logits(hidden),
            Self::Device(d) => d.logits(hidden),
        }
    }

    /// Logits of the last position of each sequence: `(batch, n_vocab)`.
    pub fn last_logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let n = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, n - 1, 1)?.squeeze(1)?)
    }
}
