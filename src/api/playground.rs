//! The playground: a plain HTML/CSS/JavaScript page at `/` for trying the server right after
//! `cargo run`. The files live in `playground/` and are compiled into the binary, so the
//! server has no runtime file access and no external CDN.

use poem::http::header;
use poem::{handler, Response};

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
pub fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../../playground/index.html"),
    )
}

#[handler]
pub fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../playground/app.js"),
    )
}

/// No icon: an empty answer rather than a 404 in every browser console.
#[handler]
pub fn favicon() -> Response {
    Response::builder()
        .status(poem::http::StatusCode::NO_CONTENT)
        .finish()
}

#[handler]
pub fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../playground/style.css"),
    )
}
