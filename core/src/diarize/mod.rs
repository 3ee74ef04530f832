//! Who spoke when. `ge2e`: the speaker encoder (voice embeddings of 1.6-s windows);
//! `cluster`: embeddings grouped into speakers (average-linkage agglomerative, cut at a
//! threshold or a given count); `turns`: where the windows go over speech, labels smoothed
//! into speaker turns, and the speaker of a stretch of time (a segment, a word).

pub mod cluster;
pub mod ge2e;
pub mod pipeline;
pub mod turns;

pub use cluster::{cluster, ClusterOptions};
pub use ge2e::{cosine, SpeakerEncoder, SpeakerError, SpeakerMel};
pub use pipeline::{
    assign, letter_label, speaker_label, summarise, Diarization, DiarizeError, DiarizeOptions,
    DiarizeRun, Diarizer, Diarizing, SpeakerFeatures, SpeakerSummary, MAX_SPEAKERS, MODEL_DIR,
    MODEL_FILE,
};
pub use turns::{speaker_of, turns, window_starts, Turn};
