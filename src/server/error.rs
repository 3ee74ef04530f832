//! Errors as HTTP responses, in OpenAI's body format `{"error": {message, type, param, code}}`
//! on every endpoint. Messages say what was wrong with the request; internal details (paths,
//! backtraces) go to the log, never into a body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::audio::AudioError;
use crate::engine::EngineError;

/// Every error, on every endpoint (OpenAI's `ErrorResponse`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorResponse<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorObject<'a> {
    /// What was wrong, for a person.
    pub message: &'a str,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request field at fault, if one is.
    pub param: Option<&'a str>,
    /// A stable code for programs (`missing_file`, `url_not_allowed`, `job_not_found`, …).
    pub code: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }
    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }
    pub fn retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }
    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .retry_after(retry_after_s)
    }
    pub fn internal(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("internal error; quote request id {request_id} to the operator"),
        )
    }
    /// The client closed the connection before its answer was ready. Nobody reads this
    /// response; the status (nginx's 499) keeps client departures out of 5xx alerts.
    pub fn client_closed() -> Self {
        Self::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            "client closed the request",
        )
        .code("client_closed_request")
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .code("payload_too_large")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after_s {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(self.body())
    }
}

impl ApiError {
    /// The body: `{"error": {message, type, param, code}}` (also a stream's `error` event).
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(ErrorResponse {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Audio(AudioError::TooLong { .. }) => {
                ApiError::too_large(e.to_string()).param("file")
            }
            EngineError::Audio(AudioError::TooManyChannels { .. }) => {
                ApiError::bad_request(e.to_string())
                    .param("channels")
                    .code("too_many_channels")
            }
            EngineError::Audio(AudioError::UnsupportedCodec(_)) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                e.to_string(),
            )
            .param("file")
            .code("unsupported_codec"),
            EngineError::Audio(ref a @ (AudioError::Internal(_) | AudioError::Spill(_))) => {
                tracing::error!(error = %e, "audio pipeline failed");
                let what = match a {
                    AudioError::Spill(_) => "internal error while storing decoded audio",
                    _ => "internal error while resampling audio",
                };
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", what)
            }
            EngineError::Audio(ref a) => {
                let code = match a {
                    AudioError::Empty => "empty_file",
                    AudioError::NotAudio(_) => "not_audio",
                    AudioError::Truncated { .. } | AudioError::TruncatedStream(_) => {
                        "truncated_audio"
                    }
                    AudioError::NoSamples => "no_audio_samples",
                    _ => "invalid_audio",
                };
                ApiError::bad_request(e.to_string())
                    .param("file")
                    .code(code)
            }
            EngineError::InvalidOption { param, message } => {
                ApiError::bad_request(message).param(param)
            }
            other => {
                tracing::error!(error = %other, "inference failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error during inference",
                )
            }
        }
    }
}
