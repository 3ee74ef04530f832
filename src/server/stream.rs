//! Streamed transcription responses (server-sent events): each segment goes out as soon as its
//! window is decoded, then the whole result.
//!
//! - `/v1/audio/transcriptions` with `stream=true`: OpenAI's data-only events,
//!   `transcript.text.delta` per segment and one `transcript.text.done` (with token `usage`);
//!   an error after the stream started is a `data: {"error": {...}}` event, which the official
//!   clients raise.
//! - `/transcribe` with `stream=true`: `event: segment` (the segment as in verbose_json) per
//!   segment, `event: transcript` with the whole result, or `event: error`.
//!
//! The stream holds the job's receiver like any waiter: a client that goes away drops it, and
//! the job stops at its next window unless another request shares it. A cache hit streams the
//! stored result at once; a request that joins a job in flight gets the segments so far first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::HttpResponse;

use super::disconnect::ClientSocket;
use super::error::ApiError;
use super::worker::{Pending, Progress, Shared};
use crate::decode::Task;
use crate::output::{Format, RenderOptions};
use crate::transcript::{Segment, Transcript};

/// A comment line sent while no text is ready, so proxies keep the connection and a closed
/// client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which events a stream speaks.
pub enum Flavor {
    /// OpenAI's `transcript.text.*` events; `logprobs`: `include[]=logprobs` was asked.
    OpenAi { logprobs: bool },
    /// `/transcribe`'s `segment` / `transcript` events; the final one rendered as `format`.
    Native {
        format: Format,
        task: Task,
        render: RenderOptions,
    },
}

enum Source {
    Hit(Arc<Transcript>),
    Job {
        rx: tokio::sync::broadcast::Receiver<super::worker::JobResult>,
        progress: Arc<Progress>,
        changed: tokio::sync::watch::Receiver<usize>,
    },
}

struct Sse {
    shared: Arc<Shared>,
    flavor: Flavor,
    source: Source,
    client: Option<ClientSocket>,
    /// Segments already sent.
    sent: usize,
    /// Whether text has gone out yet (the first delta loses its leading space).
    texted: bool,
    admitted: Instant,
    done: bool,
    /// The request's span, entered while each event is produced: a span ends when it is last
    /// exited, so a streamed request's trace covers the whole transcription, not just the moment
    /// the headers went out.
    span: tracing::Span,
    /// The model transcribing (its tokenizer renders log-probabilities).
    engine: Arc<crate::engine::Engine>,
}

/// The `text/event-stream` response for `pending`.
pub fn response(
    shared: Arc<Shared>,
    engine: Arc<crate::engine::Engine>,
    pending: Pending,
    flavor: Flavor,
    client: Option<ClientSocket>,
    admitted: Instant,
) -> HttpResponse {
    let (source, cache) = match pending {
        Pending::Hit(t) => (Source::Hit(t), "hit"),
        Pending::Job { rx, progress } => {
            let changed = progress.watch();
            (
                Source::Job {
                    rx,
                    progress,
                    changed,
                },
                "miss",
            )
        }
    };
    shared.metrics.streams_open.inc();
    let sse = Sse {
        shared,
        engine,
        flavor,
        source,
        client,
        sent: 0,
        texted: false,
        admitted,
        done: false,
        span: tracing::Span::current(),
    };
    let body = futures_util::stream::unfold(sse, |mut sse| async move {
        let span = sse.span.clone();
        let chunk = tracing::Instrument::instrument(sse.next_chunk(), span).await?;
        Some((Ok::<Bytes, Infallible>(chunk), sse))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header(("X-Cache", cache))
        .streaming(body)
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.shared.metrics.streams_open.dec();
        if !self.done {
            tracing::info!(
                segments_sent = self.sent,
                "stream closed before the transcript was done (client gone)"
            );
        }
    }
}

impl Sse {
    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let (rx, progress, changed) = match &mut self.source {
                Source::Hit(t) => {
                    let t = t.clone();
                    let mut out = self.segment_events(&t.segments);
                    out.push_str(&self.final_event(&t));
                    self.done = true;
                    return Some(out.into());
                }
                Source::Job {
                    rx,
                    progress,
                    changed,
                } => (rx, progress.clone(), changed),
            };
            let new = progress.since(self.sent);
            if !new.is_empty() {
                let out = self.segment_events(&new);
                if !out.is_empty() {
                    return Some(out.into());
                }
                continue;
            }
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        // cannot happen while we hold the progress; wait for the result alone
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                r = rx.recv() => {
                    // Every segment is recorded before the result is sent.
                    let mut out = self.segment_events(&progress.since(self.sent));
                    out.push_str(&match r {
                        Ok(Ok(t)) => self.final_event(&t),
                        Ok(Err(e)) => self.error_event(&e),
                        Err(_) => self.error_event(&ApiError::unavailable("the inference worker stopped", 5)),
                    });
                    self.done = true;
                    return Some(out.into());
                }
                _ = super::disconnect::closed(self.client) => return None,
                _ = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }

    /// Events for `segments` (which follow the ones already sent).
    fn segment_events(&mut self, segments: &[Segment]) -> String {
        self.sent += segments.len();
        let mut out = String::new();
        for s in segments {
            let event = match &self.flavor {
                Flavor::OpenAi { logprobs } => {
                    let delta = if self.texted {
                        s.text.as_str()
                    } else {
                        s.text.trim_start()
                    };
                    if delta.is_empty() {
                        continue;
                    }
                    let mut v =
                        serde_json::json!({"type": "transcript.text.delta", "delta": delta});
                    if *logprobs {
                        v["logprobs"] = serde_json::json!(s.logprobs(&self.engine.tokenizer));
                    }
                    format!("data: {v}\n\n")
                }
                // serialized directly, as the transcript's own rendering is (same number text:
                // f32 fields in their shortest form)
                Flavor::Native { .. } => format!(
                    "event: segment\ndata: {}\n\n",
                    serde_json::to_string(s).unwrap_or_default()
                ),
            };
            if !self.texted {
                self.texted = true;
                self.shared
                    .metrics
                    .stream_first_text_seconds
                    .observe(self.admitted.elapsed().as_secs_f64());
            }
            out.push_str(&event);
        }
        out
    }

    fn final_event(&self, t: &Transcript) -> String {
        tracing::debug!(
            segments = self.sent,
            seconds = self.admitted.elapsed().as_secs_f64(),
            "stream done"
        );
        match &self.flavor {
            Flavor::OpenAi { logprobs } => {
                let mut v = serde_json::json!({
                    "type": "transcript.text.done",
                    "text": t.text,
                    "usage": token_usage(t),
                });
                if *logprobs {
                    v["logprobs"] = serde_json::json!(t.logprobs(&self.engine.tokenizer));
                }
                format!("data: {v}\n\n")
            }
            Flavor::Native {
                format,
                task,
                render,
            } => format!(
                "event: transcript\ndata: {}\n\n",
                t.render_with(*format, *task, render)
            ),
        }
    }

    fn error_event(&self, e: &ApiError) -> String {
        tracing::info!(status = e.status.as_u16(), message = %e.message, "stream ended with an error");
        match self.flavor {
            Flavor::OpenAi { .. } => format!("data: {}\n\n", e.body()),
            Flavor::Native { .. } => format!("event: error\ndata: {}\n\n", e.body()),
        }
    }
}

/// The `usage` of `transcript.text.done` (OpenAI's token usage): the encoder's 50 positions per
/// second of audio it read as audio tokens, the decoded tokens (timestamps included) as output.
fn token_usage(t: &Transcript) -> serde_json::Value {
    let audio_s = t.speech.map_or(t.duration, |s| s.speech_duration);
    let audio_tokens = (audio_s * 50.0).round() as u64;
    let output: u64 = t.segments.iter().map(|s| s.tokens.len() as u64).sum();
    serde_json::json!({
        "type": "tokens",
        "input_tokens": audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
        "output_tokens": output,
        "total_tokens": audio_tokens + output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_usage_counts_audio_and_output() {
        let t = Transcript {
            text: "hi".into(),
            language: "en".into(),
            duration: 2.0,
            segments: vec![],
            fallbacks: vec![],
            speech: None,
            language_probabilities: None,
            speakers: None,
            diarized: None,
        };
        let u = token_usage(&t);
        assert_eq!(u["input_tokens"], 100);
        assert_eq!(u["total_tokens"], 100);
        assert_eq!(u["type"], "tokens");
    }
}
