//! The web console at `/`: one HTML page, its script and its style sheet,
//! built into the binary (no CDN, so it works offline). The page talks to
//! the management API like any other client.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::Api;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/console/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response() }),
        )
        .route(
            "/console/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response() }),
        )
}
