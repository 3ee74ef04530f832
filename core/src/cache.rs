//! The result cache shared by the server and batch: an LRU of finished transcripts keyed by the
//! SHA-256 of the audio bytes plus the model and every option that changes the output, bounded by
//! entries and by bytes.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::decode::TranscribeOptions;
use crate::transcript::Transcript;

/// SHA-256 of the audio bytes, hex.
pub fn audio_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The cache key: audio hash, model, and every option (all of them change the transcript: the
/// temperature list and the fallback thresholds too). The options' `Debug` form, so that an
/// option added later is covered without touching this.
pub fn cache_key(audio_sha256: &str, model: &str, o: &TranscribeOptions) -> String {
    format!("{audio_sha256}|{model}|{o:?}")
}

/// A transcript as bytes for Redis and the job store: JSON with the per-token fields that the API
/// form leaves out (log-probabilities, text probabilities), gzip-compressed (transcripts are
/// repetitive text and numbers: about 4× smaller).
pub fn encode_transcript(t: &Transcript) -> Vec<u8> {
    use std::io::Write;
    let extras: Vec<(&[f32], &[f32])> = t
        .segments
        .iter()
        .map(|s| (s.token_logprobs.as_slice(), s.text_probs.as_slice()))
        .collect();
    let json = serde_json::to_vec(&serde_json::json!({ "t": t, "x": extras })).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(&json);
    gz.finish().unwrap_or_default()
}

/// The inverse of [`encode_transcript`]; `None` for bytes it did not write.
pub fn decode_transcript(bytes: &[u8]) -> Option<Transcript> {
    use std::io::Read;
    #[derive(serde::Deserialize)]
    struct Stored {
        t: Transcript,
        x: Vec<(Vec<f32>, Vec<f32>)>,
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(256 << 20)
        .read_to_end(&mut json)
        .ok()?;
    let Stored { mut t, x } = serde_json::from_slice(&json).ok()?;
    for (s, (lp, tp)) in t.segments.iter_mut().zip(x) {
        s.token_logprobs = lp;
        s.text_probs = tp;
    }
    Some(t)
}

struct Inner {
    lru: lru::LruCache<String, (Arc<Transcript>, usize)>,
    bytes: usize,
}

pub struct ResultCache {
    inner: Option<Mutex<Inner>>,
    max_bytes: usize,
}

/// The one default of each result-cache setting: `serve` (`cache_entries`, `cache_mb`) and
/// `batch` start from here.
pub const DEFAULT_CACHE_ENTRIES: usize = 1024;
pub const DEFAULT_CACHE_MB: u64 = 64;

impl Default for ResultCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_ENTRIES, (DEFAULT_CACHE_MB << 20) as usize)
    }
}

impl ResultCache {
    /// `max_entries == 0` disables caching.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let inner = NonZeroUsize::new(max_entries).map(|n| {
            Mutex::new(Inner {
                lru: lru::LruCache::new(n),
                bytes: 0,
            })
        });
        Self { inner, max_bytes }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Transcript>> {
        let mut g = self
            .inner
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.lru.get(key).map(|(t, _)| t.clone())
    }

    pub fn put(&self, key: String, t: Arc<Transcript>) {
        let Some(inner) = &self.inner else { return };
        let size = approx_size(&t) + key.len();
        if size > self.max_bytes {
            return;
        }
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = g.lru.push(key, (t, size)).map(|(_, v)| v) {
            g.bytes -= old;
        }
        g.bytes += size;
        while g.bytes > self.max_bytes {
            match g.lru.pop_lru() {
                Some((_, (_, s))) => g.bytes -= s,
                None => break,
            }
        }
    }

    /// (entries, bytes)
    pub fn usage(&self) -> (usize, usize) {
        match &self.inner {
            Some(m) => {
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                (g.lru.len(), g.bytes)
            }
            None => (0, 0),
        }
    }
}

fn approx_size(t: &Transcript) -> usize {
    t.text.len()
        + t.language.len()
        + t.segments
            .iter()
            .map(|s| 96 + s.text.len() + 4 * s.tokens.len())
            .sum::<usize>()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transcript of `text` and nothing else (unit tests here and in `admission`).
    pub(crate) fn t(text: &str) -> Arc<Transcript> {
        Arc::new(Transcript {
            text: text.into(),
            language: "en".into(),
            duration: 1.0,
            segments: vec![],
            fallbacks: vec![],
            speech: None,
            language_probabilities: None,
            speakers: None,
            diarized: None,
        })
    }

    #[test]
    fn key_covers_the_fallback_and_beam_settings() {
        let base = TranscribeOptions::default();
        let key = |o: &TranscribeOptions| cache_key("abc", "m", o);
        let variants = [
            TranscribeOptions {
                temperatures: vec![0.0],
                ..base.clone()
            },
            TranscribeOptions {
                compression_ratio_threshold: Some(2.0),
                ..base.clone()
            },
            TranscribeOptions {
                logprob_threshold: None,
                ..base.clone()
            },
            TranscribeOptions {
                no_speech_threshold: Some(0.5),
                ..base.clone()
            },
            TranscribeOptions {
                condition_on_previous_text: false,
                ..base.clone()
            },
            TranscribeOptions {
                best_of: 1,
                ..base.clone()
            },
            TranscribeOptions {
                beam: crate::decode::BeamOptions {
                    beam_size: base.beam.beam_size + 1,
                    ..base.beam
                },
                ..base.clone()
            },
            TranscribeOptions {
                beam: crate::decode::BeamOptions {
                    patience: 2.0,
                    ..base.beam
                },
                ..base.clone()
            },
            TranscribeOptions {
                beam: crate::decode::BeamOptions {
                    length_penalty: Some(0.6),
                    ..base.beam
                },
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(key(v), key(&base), "{v:?}");
        }
    }

    #[test]
    fn transcripts_round_trip_with_their_token_fields() {
        let seg = crate::transcript::Segment {
            id: 0,
            seek: 0,
            start: 0.0,
            end: 1.5,
            text: " hello hello hello".into(),
            tokens: vec![1, 2, 3],
            temperature: 0.0,
            avg_logprob: -0.25,
            compression_ratio: 1.2,
            no_speech_prob: 0.01,
            words: None,
            speaker: None,
            token_logprobs: vec![-0.1, -0.2, -0.3],
            text_probs: vec![0.9, 0.8, 0.7],
        };
        let mut t = (*t("hello hello hello")).clone();
        t.segments = vec![seg; 20];
        let bytes = encode_transcript(&t);
        assert!(
            bytes.len() < serde_json::to_vec(&t).unwrap().len() / 4,
            "{}",
            bytes.len()
        );
        assert_eq!(decode_transcript(&bytes), Some(t));
        assert_eq!(decode_transcript(b"not gzip"), None);
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let c = ResultCache::new(2, 1 << 20);
        c.put("a".into(), t("1"));
        c.put("b".into(), t("2"));
        assert!(c.get("a").is_some()); // a is now most recent
        c.put("c".into(), t("3"));
        assert!(c.get("b").is_none() && c.get("a").is_some() && c.get("c").is_some());

        let c = ResultCache::new(100, 300);
        for i in 0..10 {
            c.put(format!("k{i}"), t(&"x".repeat(100)));
        }
        let (n, bytes) = c.usage();
        assert!(bytes <= 300 && n == 2, "{n} entries, {bytes} bytes");
        assert!(ResultCache::new(0, 100).get("k").is_none());
    }

    #[test]
    fn key_changes_with_options() {
        let o = TranscribeOptions::default();
        let other = TranscribeOptions {
            timestamps: false,
            ..Default::default()
        };
        assert_ne!(cache_key("h", "m", &o), cache_key("h", "m", &other));
        let words = TranscribeOptions {
            word_timestamps: true,
            ..Default::default()
        };
        assert_ne!(cache_key("h", "m", &o), cache_key("h", "m", &words));
        assert_eq!(
            audio_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
