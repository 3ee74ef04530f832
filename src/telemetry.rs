//! Logs and traces. Logs go to stderr as text or JSON lines; with `otlp_endpoint` set, spans also
//! go to an OpenTelemetry collector over OTLP/HTTP (protobuf), batched on a thread of their own.
//!
//! What a trace holds: a `request` span per HTTP request (the W3C `traceparent` header continues
//! the caller's trace), and under it the request's work on whichever thread does it: `decode`
//! (container and codec to samples), `mel` (speech detection and the log-mel), `queue` (waiting
//! for a transcription thread), `transcribe`, one `window` per 30-s window with an `encoder` and a
//! `decoder` span in it (the decoder span covers all of that window's steps, with the tokens and
//! steps as attributes — never a span per token), and `render`. Every span carries the request id.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp_endpoint `{0}` is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Where spans go, from the config.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's base URL (`http://collector:4318`; `/v1/traces` is appended unless the
    /// URL already names a path).
    pub endpoint: String,
    /// Share of new traces kept (0–1); a caller's `traceparent` sampling decision is followed.
    pub sample_ratio: f64,
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flush and stop the exporter (bounded by its timeout).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "traces not all sent at shutdown");
            }
        }
    }
}

/// The URL spans are posted to.
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let u = url::Url::parse(endpoint).map_err(|_| TelemetryError::Endpoint(endpoint.into()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(TelemetryError::Endpoint(endpoint.into()));
    }
    let mut u = u;
    if u.path() == "/" || u.path().is_empty() {
        u.set_path("/v1/traces");
    }
    Ok(u.to_string())
}

/// Log to stderr at `level` (`RUST_LOG` overrides), as `text` or `json` lines; with `otlp`,
/// also export spans. Call once, first thing.
pub fn init(
    format: &str,
    level: &str,
    otlp: Option<&OtlpSettings>,
) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // symphonia logs every damaged packet at error level; the reason reaches the user through our own errors.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},symphonia_core=off,symphonia_bundle_mp3=off,symphonia_bundle_flac=off,symphonia_format_ogg=off,symphonia_format_isomp4=off,symphonia_format_riff=off,symphonia_codec_aac=off,symphonia_codec_vorbis=off")));
    let fmt = tracing_subscriber::fmt::layer()
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let mut layers = vec![fmt];
    let provider = match otlp {
        Some(o) => {
            let (layer, provider) = otlp_layer(o)?;
            layers.push(layer);
            Some(provider)
        }
        None => None,
    };
    // A second init (tests, or a library user with its own subscriber) keeps the first.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(o) = otlp {
        // Logged once the subscriber is up; without credentials a URL may carry.
        let shown = url::Url::parse(&traces_url(&o.endpoint)?).map_or_else(
            |_| String::new(),
            |mut u| {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.to_string()
            },
        );
        tracing::info!(endpoint = %shown, sample_ratio = o.sample_ratio, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn otlp_layer(
    o: &OtlpSettings,
) -> Result<(BoxedLayer, opentelemetry_sdk::trace::SdkTracerProvider), TelemetryError> {
    use opentelemetry_sdk::trace::Sampler;
    let url = traces_url(&o.endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(UreqClient::new(Duration::from_secs(10)))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let ratio = if o.sample_ratio.is_finite() {
        o.sample_ratio.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("whisperd")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("whisperd");
    // Spans from whisperd down to debug level (the per-window ones), events at info and above
    // (they become span events); nothing from dependencies, nothing from the scheduler thread
    // (its batches serve many requests at once: each request's own spans time its share).
    let filter = tracing_subscriber::filter::filter_fn(|m| {
        let ours =
            m.target().starts_with("whisperd") && !m.target().starts_with("whisperd::scheduler");
        ours && if m.is_span() {
            *m.level() <= tracing::Level::DEBUG
        } else {
            *m.level() <= tracing::Level::INFO
        }
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter)
        .boxed();
    Ok((layer, provider))
}

/// OTLP over ureq (already the service's HTTP client): the exporter calls it from its own batch
/// thread, where blocking is fine.
#[derive(Debug)]
struct UreqClient {
    agent: ureq::Agent,
}

impl UreqClient {
    fn new(timeout: Duration) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .redirects(0)
                .build(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let mut req = self
            .agent
            .request(request.method().as_str(), &request.uri().to_string());
        for (name, value) in request.headers() {
            if let Ok(v) = value.to_str() {
                req = req.set(name.as_str(), v);
            }
        }
        let (status, body) = match req.send_bytes(request.body()) {
            Ok(r) => (r.status(), read_body(r)),
            Err(ureq::Error::Status(code, r)) => (code, read_body(r)),
            Err(e) => return Err(Box::new(e)),
        };
        Ok(http::Response::builder()
            .status(status)
            .body(bytes::Bytes::from(body))?)
    }
}

/// At most 64 KiB of a collector's answer (it is a small protobuf or an error message).
fn read_body(r: ureq::Response) -> Vec<u8> {
    use std::io::Read;
    let mut body = Vec::new();
    let _ = r.into_reader().take(64 * 1024).read_to_end(&mut body);
    body
}

/// Continue the caller's trace: a W3C `traceparent` (with its `tracestate`) from an incoming
/// request becomes the parent of `span`. Without OTLP, or without the header, nothing changes.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(parent) = traceparent else {
        return;
    };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), parent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_to_a_base() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/custom/traces").unwrap(),
            "https://otel.example/custom/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/?tenant=a").unwrap(),
            "http://c:4318/v1/traces?tenant=a"
        );
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("ftp://collector").is_err());
    }
}
