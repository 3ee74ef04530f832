//! Reading a multipart upload with its size limit enforced while the body streams in.

use std::collections::HashMap;

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest};
use futures_util::TryStreamExt;

use super::error::ApiError;

/// Largest non-file form field (prompt, language, …).
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Largest `known_speaker_references[]` field (a data URL of up to 30 s of audio).
const MAX_REFERENCE_BYTES: usize = 4 * 1024 * 1024;

pub struct Upload {
    pub file: Option<Vec<u8>>,
    pub fields: HashMap<String, String>,
}

/// Read the form: the audio in `file` (or `audio`), every other field as text.
pub async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    max_bytes: usize,
) -> Result<Upload, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "upload over the limit of {} MiB",
            max_bytes / (1024 * 1024)
        ))
        .param("file")
    };
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > max_bytes + MAX_FIELD_BYTES {
            return Err(too_large());
        }
    }
    let is_multipart = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return Err(ApiError::bad_request(
            "expected a multipart/form-data body with the audio in field `file`",
        ));
    }
    // Take the whole body off the connection first (within the size limit), then parse it from
    // memory: the multipart parser then never waits on the socket, and a stalled or oversized
    // body is caught here.
    let mut payload = payload;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload
        .try_next()
        .await
        .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?
    {
        if body.len() + chunk.len() > max_bytes + MAX_FIELD_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // actix-multipart waits for more data when a body ends without its closing delimiter, even
    // though the body is complete: check for it here so such a request gets its 400 at once.
    if let Some(boundary) = boundary(req) {
        if !has_closing_delimiter(&body, &boundary) {
            return Err(ApiError::bad_request(format!(
                "malformed multipart body: it ends without the closing boundary `--{boundary}--`"
            ))
            .code("malformed_multipart"));
        }
    }
    let body = futures_util::stream::once(async move {
        Ok::<_, actix_web::error::PayloadError>(body.freeze())
    });
    let mut form = Multipart::new(req.headers(), body);
    let mut upload = Upload {
        file: None,
        fields: HashMap::new(),
    };
    let malformed = |e: actix_multipart::MultipartError| {
        ApiError::bad_request(format!("malformed multipart body: {e}"))
    };
    while let Some(mut field) = form.try_next().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" || name == "audio" {
            if upload.file.is_some() {
                return Err(ApiError::bad_request(
                    "the form carries more than one audio file (`file`/`audio` fields); send one per request",
                )
                .param("file")
                .code("duplicate_file"));
            }
            let mut buf = Vec::new();
            while let Some(chunk) = field.try_next().await.map_err(malformed)? {
                if buf.len() + chunk.len() > max_bytes {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            upload.file = Some(buf);
        } else {
            // Known speakers' reference clips are data URLs of a few seconds of audio.
            let limit = if name.starts_with("known_speaker_references") {
                MAX_REFERENCE_BYTES
            } else {
                MAX_FIELD_BYTES
            };
            let mut buf = Vec::new();
            while let Some(chunk) = field.try_next().await.map_err(malformed)? {
                if buf.len() + chunk.len() > limit {
                    let e = ApiError::bad_request(format!(
                        "form field `{name}` is over {} KiB",
                        limit / 1024
                    ));
                    return Err(if limit == MAX_FIELD_BYTES {
                        e
                    } else {
                        e.param("known_speaker_references")
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(buf)
                .map_err(|_| ApiError::bad_request(format!("form field `{name}` is not UTF-8")))?;
            // `timestamp_granularities[]` may repeat; keep every value.
            upload
                .fields
                .entry(name)
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value)
                })
                .or_insert(value);
        }
    }
    Ok(upload)
}

/// The `boundary` parameter of a multipart Content-Type.
fn boundary(req: &HttpRequest) -> Option<String> {
    let ct = req.headers().get("content-type")?.to_str().ok()?;
    ct.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Whether `body` holds the close delimiter `--BOUNDARY--` at the start of a line. Only the tail
/// is searched: anything after the delimiter is an epilogue, which clients do not send at length.
fn has_closing_delimiter(body: &[u8], boundary: &str) -> bool {
    const TAIL: usize = 64 * 1024;
    let close = format!("--{boundary}--");
    let tail = &body[body.len().saturating_sub(TAIL + close.len())..];
    let whole = tail.len() == body.len();
    let at_line_start = |i: usize| if i == 0 { whole } else { tail[i - 1] == b'\n' };
    tail.windows(close.len())
        .enumerate()
        .any(|(i, w)| w == close.as_bytes() && at_line_start(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_delimiter_is_found_only_at_a_line_start() {
        let b = "XyZ";
        assert!(has_closing_delimiter(b"--XyZ\r\n...\r\n--XyZ--\r\n", b));
        assert!(has_closing_delimiter(b"--XyZ\r\n...\r\n--XyZ--", b));
        assert!(!has_closing_delimiter(b"--XyZ\r\n...\r\n", b));
        assert!(!has_closing_delimiter(b"--XyZ\r\n... not--XyZ--", b));
        assert!(!has_closing_delimiter(b"", b));
    }
}
