//! Who spoke when. `ge2e`: the speaker encoder (voice embeddings of 1.6-s windows);
//! `cluster`: embeddings grouped into speakers (average-linkage agglomerative, cut at a
//! threshold or a given count). Windowing over speech, smoothing and assigning speakers to
//! segments build on them.

pub mod cluster;
pub mod ge2e;

pub use cluster::{cluster, ClusterOptions};
pub use ge2e::{cosine, SpeakerEncoder, SpeakerError, SpeakerMel};
