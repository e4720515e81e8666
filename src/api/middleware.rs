//! The HTTP layer around every route: a request id and a tracing span per request, the
//! access log and metrics, CORS, and the security headers. Errors are already rendered as
//! the contract's JSON body by the time they get here (`error::render_error`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use poem::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use poem::web::{Compress, CompressionAlgo};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tracing::Instrument;
use uuid::Uuid;

use super::drain::BodyTap;
use super::error::ApiError;
use super::route_labels::RouteLabels;
use super::state::AppState;
use crate::config::HttpConfig;

/// The client's address (see [`client_ip`]). Handlers read it from the request's
/// extensions (login and sign-up limits use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

tokio::task_local! {
    /// The request id, for code that runs inside a request but is handed no request (the
    /// panic handler): its log line names the id even where the request's span is disabled.
    static CURRENT_REQUEST_ID: String;
}

pub struct HttpLayer {
    pub state: AppState,
    pub labels: Arc<RouteLabels>,
}

impl<E: Endpoint> Middleware<E> for HttpLayer {
    type Output = HttpLayerEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        HttpLayerEndpoint {
            inner,
            state: self.state.clone(),
            labels: self.labels.clone(),
        }
    }
}

pub struct HttpLayerEndpoint<E> {
    inner: E,
    state: AppState,
    labels: Arc<RouteLabels>,
}

impl<E: Endpoint> Endpoint for HttpLayerEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let http = &self.state.config.http;
        let request_id = http
            .trust_proxy_headers
            .then(|| {
                header_str(req.headers(), "x-request-id")
                    .filter(|id| valid_request_id(id))
                    .map(str::to_string)
            })
            .flatten()
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
        let client_ip = client_ip(&req, http);
        req.extensions_mut().insert(ClientIp(client_ip));
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let max_body = body_limit(&req, &self.state.config);
        let body_tap = BodyTap::install(&mut req, max_body);

        let method = req.method().clone();
        // The path only: a query can carry a token (`/api/ws?token=`), which never reaches logs.
        let path = req.uri().path().to_string();
        let origin = header_str(req.headers(), "origin").map(str::to_string);
        let encoding = header_str(req.headers(), "accept-encoding").and_then(negotiate_encoding);
        let cors_origin =
            origin.filter(|o| origin_allowed(o, req.headers(), &self.state.config.cors_origins));

        let span =
            tracing::info_span!("http", request_id = %request_id, method = %method, path = %path);
        let mut response = if method == Method::OPTIONS
            && req.headers().contains_key("access-control-request-method")
        {
            preflight(cors_origin.is_some())
        } else {
            let call = self.inner.call(req).instrument(span.clone());
            match CURRENT_REQUEST_ID.scope(request_id.clone(), call).await {
                Ok(response) => response.into_response(),
                Err(err) => super::error::render_error(err).await,
            }
        };
        // The matched route, for the metrics label.
        let pattern = response.data::<poem::PathPattern>().cloned();
        if !body_tap.finish(max_body).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }

        if let Some(algo) = encoding {
            response = compress(response, algo).await;
        }
        let status = response.status();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert("x-request-id", value);
        }
        if let Some(origin) = cors_origin
            .as_deref()
            .and_then(|o| HeaderValue::from_str(o).ok())
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id, retry-after"),
            );
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        security_headers(headers, &path, http.hsts_max_age_secs);

        let elapsed = started.elapsed();
        let route = self.labels.label(pattern.as_ref(), status);
        self.state
            .metrics
            .observe_http(&route, method_label(&method), status.as_u16(), elapsed);
        let _enter = span.enter();
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_millis() as u64,
            "request"
        );
        Ok(response)
    }
}

/// poem's `CatchPanic` handler: a handler that panics answers the contract's 500 body instead
/// of dropping the connection. The log line carries the request id; the payload is logged,
/// never returned.
pub fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    let request_id = CURRENT_REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_default();
    tracing::error!(%request_id, panic = %what, "handler panicked");
    ApiError::internal().into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The client's address. Behind trusted proxies it is the right-most `X-Forwarded-For` entry
/// that is not a trusted proxy: each proxy appends the address it saw, so entries to the
/// left of the last untrusted one are whatever the client chose to send.
fn client_ip(req: &Request, http: &HttpConfig) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr().map(|a| a.ip())?;
    let trusted = |ip: IpAddr| http.trusted_proxies.iter().any(|n| n.contains(ip));
    if !http.trust_proxy_headers || !trusted(peer) {
        return Some(peer);
    }
    // Right to left: the last header line's last entry first.
    let hops = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','));
    let mut client = peer;
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip) {
                    break;
                }
            }
            // Garbage in the chain: the last good hop is as far as it can be believed.
            Err(_) => break,
        }
    }
    Some(client)
}

/// Allowed: an origin listed in `CORS_ORIGINS` (`*` allows any), or the server's own origin
/// (the playground and Swagger UI it serves).
pub fn origin_allowed(origin: &str, headers: &HeaderMap, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    match (origin.split_once("://"), header_str(headers, "host")) {
        (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

fn preflight(allowed: bool) -> Response {
    if !allowed {
        // No CORS headers: the browser refuses the real request.
        return StatusCode::NO_CONTENT.into_response();
    }
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PATCH, DELETE, OPTIONS",
        )
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type, x-request-id",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .finish()
}

/// Headers that matter for a JSON API. Swagger UI needs inline scripts, so `/docs` gets no
/// CSP; the playground may load its own script and style and open a socket to this server.
fn security_headers(headers: &mut HeaderMap, path: &str, hsts_max_age_secs: u64) {
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    let csp = if path.starts_with("/docs") {
        None
    } else if path == "/" || path.starts_with("/playground/") {
        Some("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    } else {
        Some("default-src 'none'; frame-ancestors 'none'; base-uri 'none'")
    };
    if let Some(csp) = csp {
        headers.insert("content-security-policy", HeaderValue::from_static(csp));
    }
    if hsts_max_age_secs > 0 {
        if let Ok(value) =
            HeaderValue::from_str(&format!("max-age={hsts_max_age_secs}; includeSubDomains"))
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }
}

/// Bodies smaller than this are sent as they are: compressing them saves nothing.
pub const MIN_COMPRESS_BYTES: usize = 1024;

/// The client's preferred of brotli and gzip (`q=0` excludes one).
fn negotiate_encoding(accept: &str) -> Option<CompressionAlgo> {
    let offers = |name: &str| {
        accept.split(',').any(|part| {
            let mut pieces = part.split(';').map(str::trim);
            pieces
                .next()
                .is_some_and(|coding| coding.eq_ignore_ascii_case(name))
                && !pieces.any(|p| p.replace(' ', "").starts_with("q=0") && !p.contains("q=0."))
        })
    };
    if offers("br") {
        Some(CompressionAlgo::BR)
    } else if offers("gzip") {
        Some(CompressionAlgo::GZIP)
    } else {
        None
    }
}

/// Compresses textual bodies of at least [`MIN_COMPRESS_BYTES`]; upgrades (WebSocket),
/// already-encoded and binary bodies pass through.
async fn compress(mut response: Response, algo: CompressionAlgo) -> Response {
    let textual = response.content_type().is_some_and(|ct| {
        ct.starts_with("application/json")
            || ct.starts_with("text/")
            || ct.starts_with("application/javascript")
    });
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        || response.headers().contains_key(header::CONTENT_ENCODING)
        || !textual
    {
        return response;
    }
    let Ok(bytes) = response.take_body().into_bytes().await else {
        return response;
    };
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if bytes.len() < MIN_COMPRESS_BYTES {
        response.set_body(bytes);
        return response;
    }
    response.set_body(bytes);
    Compress::new(response, algo).into_response()
}

/// The method label: the standard methods by name, anything else as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The largest body a request may send: `MAX_BODY_BYTES`, except a knowledge-base upload,
/// which may carry a document of `MAX_DOCUMENT_BYTES` and its multipart framing (the
/// handler refuses a larger file with the same 413).
fn body_limit(req: &Request, config: &crate::config::Config) -> usize {
    let path = req.uri().path();
    let upload = req.method() == Method::POST
        && path.starts_with("/api/knowledge-bases/")
        && path.ends_with("/documents");
    match upload {
        true => config
            .knowledge
            .max_document_bytes
            .saturating_add(64 * 1024)
            .max(config.limits.max_body_bytes),
        false => config.limits.max_body_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_a_closed_set() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"FOO1").unwrap();
        assert_eq!(method_label(&made_up), "OTHER");
    }

    #[test]
    fn encodings_are_negotiated() {
        assert!(matches!(
            negotiate_encoding("gzip, deflate, br"),
            Some(CompressionAlgo::BR)
        ));
        assert!(matches!(
            negotiate_encoding("gzip"),
            Some(CompressionAlgo::GZIP)
        ));
        assert!(matches!(
            negotiate_encoding("br;q=0, gzip;q=0.8"),
            Some(CompressionAlgo::GZIP)
        ));
        assert!(negotiate_encoding("identity").is_none());
    }

    #[test]
    fn request_ids_from_proxies_are_checked() {
        assert!(valid_request_id("abc-123"));
        assert!(!valid_request_id("evil\nheader"));
        assert!(!valid_request_id(&"x".repeat(200)));
    }
}
