//! Whisper's tokenizer (`tokenizer.json` through the `tokenizers` crate) and its special tokens.
//! Timestamp tokens are not in `tokenizer.json`: they are the ids after `<|notimestamps|>`,
//! one per 0.02 s.

use std::path::Path;

use super::languages::LANGUAGES;

/// Seconds per timestamp token.
pub const TIME_PRECISION: f64 = 0.02;

#[derive(Debug, Clone)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub sot_prev: u32,
    pub sot_lm: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub no_speech: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load tokenizer: {msg}")]
    Load { path: String, msg: String },
    #[error("{path}: special token {token} is missing")]
    MissingSpecial { path: String, token: &'static str },
    #[error("tokenizer failed: {0}")]
    Codec(String),
}

pub struct WhisperTokenizer {
    inner: tokenizers::Tokenizer,
    pub specials: SpecialTokens,
    /// (code, token id) of every language the vocabulary has.
    languages: Vec<(&'static str, u32)>,
}

impl WhisperTokenizer {
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let p = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let id = |names: &[&'static str]| -> Result<u32, TokenizerError> {
            names
                .iter()
                .find_map(|n| inner.token_to_id(n))
                .ok_or(TokenizerError::MissingSpecial {
                    path: p.clone(),
                    token: names[0],
                })
        };
        let no_timestamps = id(&["<|notimestamps|>"])?;
        let specials = SpecialTokens {
            eot: id(&["<|endoftext|>"])?,
            sot: id(&["<|startoftranscript|>"])?,
            sot_prev: id(&["<|startofprev|>"])?,
            sot_lm: id(&["<|startoflm|>"])?,
            transcribe: id(&["<|transcribe|>"])?,
            translate: id(&["<|translate|>"])?,
            no_speech: id(&["<|nospeech|>", "<|nocaptions|>"])?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
        };
        let languages = LANGUAGES
            .iter()
            .filter_map(|(code, _)| {
                inner
                    .token_to_id(&format!("<|{code}|>"))
                    .map(|t| (*code, t))
            })
            .collect();
        Ok(Self {
            inner,
            specials,
            languages,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of the text tokens among `ids` (specials and timestamps are skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let text: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&t| t < self.specials.eot)
            .collect();
        self.inner
            .decode(&text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// The raw bytes a text token stands for (byte-level BPE: a token may hold part of a
    /// multi-byte character). `None` for ids outside the vocabulary or special tokens.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if id >= self.specials.eot {
            return None;
        }
        let piece = self.inner.id_to_token(id)?;
        piece.chars().map(byte_of_char).collect()
    }

    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, t)| *t)
    }

    pub fn languages(&self) -> &[(&'static str, u32)] {
        &self.languages
    }

    /// Tokens for symbols that are not speech (OpenAI's `non_speech_tokens`), used when the model
    /// directory does not list the tokens to suppress.
    pub fn non_speech_tokens(&self) -> Vec<u32> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        let miscellaneous: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        symbols.extend(miscellaneous.iter().cloned());
        let mut out: Vec<u32> = Vec::new();
        // " -" and " '" only as whole tokens: they start words legitimately otherwise.
        for s in [" -", " '"] {
            if let Ok(ids) = self.encode(s) {
                if let Some(&t) = ids.first() {
                    out.push(t);
                }
            }
        }
        for symbol in &symbols {
            for candidate in [symbol.clone(), format!(" {symbol}")] {
                if let Ok(ids) = self.encode(&candidate) {
                    if ids.len() == 1 || (!ids.is_empty() && miscellaneous.contains(symbol)) {
                        out.push(ids[0]);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// GPT-2's byte-level BPE writes each byte as one printable character: the printable Latin-1
/// bytes as themselves, the other 68 as U+0100 onwards in byte order. The inverse of that map.
fn byte_of_char(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let u = c as u32;
    if u < 256 && printable(u) {
        return Some(u as u8);
    }
    let k = u.checked_sub(256)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(k as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod byte_tests {
    #[test]
    fn bpe_characters_map_back_to_bytes() {
        use super::byte_of_char;
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char('\u{120}'), Some(b' ')); // "Ġ"
        assert_eq!(byte_of_char('\u{100}'), Some(0));
        assert_eq!(byte_of_char('\u{10A}'), Some(b'\n')); // "Ċ"
        assert_eq!(byte_of_char('\u{1000}'), None);
    }
}
