//! Who spoke when. `ge2e`: the speaker encoder (voice embeddings of 1.6-s windows), the first
//! stage of diarization; clustering and assigning speakers to segments build on it.

pub mod ge2e;

pub use ge2e::{cosine, SpeakerEncoder, SpeakerError, SpeakerMel};
