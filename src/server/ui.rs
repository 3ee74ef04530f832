//! The web page at `/` (`ui = true`): four files compiled into the binary, so it works offline
//! and needs nothing beside the binary. The page speaks only the public HTTP API, with the key the
//! user types in; it is not part of the API (and not in `/openapi.json`).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
const WORKLET: &str = include_str!("ui/capture-worklet.js");

/// Only this server's own files and the API (same origin); recorded or chosen audio plays from
/// `blob:` URLs. No inline script, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's paths, which need no API key.
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/" | "/ui/app.js" | "/ui/style.css" | "/ui/capture-worklet.js"
    )
}

pub fn routes(cfg: &mut web::ServiceConfig, on: bool) {
    if !on {
        return;
    }
    cfg.route(
        "/",
        web::get().to(|| asset(INDEX, "text/html; charset=utf-8")),
    )
    .route(
        "/ui/app.js",
        web::get().to(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
    )
    .route(
        "/ui/style.css",
        web::get().to(|| asset(STYLE, "text/css; charset=utf-8")),
    )
    .route(
        "/ui/capture-worklet.js",
        web::get().to(|| asset(WORKLET, "text/javascript; charset=utf-8")),
    );
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // The files change with the binary: revalidate rather than keep a stale page after an upgrade.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
