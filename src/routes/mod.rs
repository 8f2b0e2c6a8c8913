//! HTTP routes, one file per resource, plus the shared request plumbing: JSON body limits and
//! error mapping, JSON 404/405, request ids.
pub mod admin;
pub mod auth;
pub mod clients;
pub mod email;
pub mod federation;
pub mod health;
pub mod introspection;
pub mod jwks;
pub mod mfa;
pub mod openapi;
pub mod passkey_json;
pub mod respond;
pub mod session;
pub mod step_up;
pub mod users;
pub mod webauthn;

use actix_web::ResponseError;
use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{
        header::{self, HeaderName, HeaderValue},
        Method, StatusCode,
    },
    middleware::Next,
    web, HttpMessage, HttpRequest, HttpResponse,
};
use prometheus::{Histogram, IntCounter};
use std::cell::RefCell;

use crate::{
    app::{Caller, Client},
    auth::{AuthenticatedSession, RequestUser},
    error::ApiError,
    metrics::Metrics,
    state::AppState,
    telemetry::{self, InRequest, RequestId},
};

/// `public_metrics`: whether /metrics is a route of this listener (false when METRICS_PORT serves
/// it: then no spelling of the path reaches it here, since the route does not exist).
pub fn configure(
    body_limit: usize,
    public_metrics: bool,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(
            web::JsonConfig::default()
                .limit(body_limit)
                .content_type_required(true)
                .error_handler(move |e, _| json_error(e, body_limit).into()),
        )
        .app_data(web::PathConfig::default().error_handler(|e: PathError, _| {
            ApiError::invalid(format!("invalid path parameter: {}", short(&e.to_string()))).into()
        }))
        .app_data(
            web::QueryConfig::default().error_handler(|e: QueryPayloadError, _| {
                ApiError::invalid(format!("invalid query string: {}", short(&e.to_string()))).into()
            }),
        );
        health::configure(cfg, public_metrics);
        jwks::configure(cfg);
        users::configure(cfg);
        email::configure(cfg);
        auth::configure(cfg);
        federation::configure(cfg);
        mfa::configure(cfg);
        webauthn::configure(cfg);
        session::configure(cfg);
        step_up::configure(cfg);
        introspection::configure(cfg);
        cfg.service(
            resource("/openapi.json", "GET")
                .route(web::get().to(crate::routes::openapi::openapi_json)),
        );
        admin::configure(cfg, clients::configure_admin(admin::SCOPE));
    }
}

/// A resource whose other methods get a JSON 405 with `Allow: <allow>`, labelled with its path
/// template in the request metrics.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    scoped_resource("", path, allow)
}

/// [`resource`] inside `web::scope(scope)`: the metrics label is the whole template.
pub(crate) fn scoped_resource(scope: &str, path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .app_data(RouteMetrics::new(format!("{scope}{path}")))
        .default_service(web::to(move || async move {
            Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow))
        }))
}

/// A resource's label in `http_requests_total` and `http_request_duration_seconds`, with the
/// metric children it has used, resolved once per method and status. actix builds the routes
/// once per worker thread, so this needs no lock; and the hot path neither re-matches the path to
/// find its template nor looks the label values up in the metric vectors for every request.
struct RouteMetrics {
    route: String,
    children: RefCell<Vec<(Method, StatusCode, IntCounter, Histogram)>>,
}

impl RouteMetrics {
    fn new(route: String) -> Self {
        RouteMetrics {
            route,
            children: RefCell::new(Vec::new()),
        }
    }

    fn observe(&self, metrics: &Metrics, method: &Method, status: StatusCode, seconds: f64) {
        let mut children = self.children.borrow_mut();
        let found = children
            .iter()
            .find(|(m, s, _, _)| *s == status && m == method);
        let (requests, duration) = match found {
            Some((_, _, requests, duration)) => (requests, duration),
            None => {
                let labels = [method.as_str(), self.route.as_str(), status.as_str()];
                children.push((
                    method.clone(),
                    status,
                    metrics.http_requests.with_label_values(&labels),
                    metrics.http_duration.with_label_values(&labels),
                ));
                let (_, _, requests, duration) = &children[children.len() - 1];
                (requests, duration)
            }
        };
        requests.inc();
        duration.observe(seconds);
    }
}

/// Requests that matched no resource (404s) share one label.
fn observe_unmatched(metrics: &Metrics, method: &Method, status: StatusCode, seconds: f64) {
    let labels = [method.as_str(), "unmatched", status.as_str()];
    metrics.http_requests.with_label_values(&labels).inc();
    metrics
        .http_duration
        .with_label_values(&labels)
        .observe(seconds);
}

pub async fn not_found(_: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}

/// Where an anonymous request comes from.
pub(crate) fn client(req: &HttpRequest, state: &AppState) -> Client {
    Client {
        ip: state.client_ip(req),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// The authenticated caller of a request.
pub(crate) fn caller(
    req: &HttpRequest,
    state: &AppState,
    session: &AuthenticatedSession,
) -> Caller {
    Caller {
        user_id: session.user_id,
        session_id: session.session_id,
        access: session.access.clone(),
        ip: state.client_ip(req),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Maps body errors to the contract: 415 wrong type, 413 too big, 400 otherwise, without echoing
/// the parser's raw message (which can quote the input).
fn json_error(e: JsonPayloadError, limit: usize) -> ApiError {
    match e {
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge(limit)
        }
        JsonPayloadError::Deserialize(e) => ApiError::invalid(describe_serde_error(&e)),
        _ => ApiError::invalid("could not read the request body"),
    }
}

/// A short, input-free description of why a JSON body was refused.
fn describe_serde_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "request body is not valid JSON".into(),
        Category::Data => {
            let msg = e.to_string();
            // serde's messages name the field between backticks; keep only known shapes.
            for (prefix, what) in [
                ("missing field `", "missing field"),
                ("unknown field `", "unknown field"),
                ("duplicate field `", "duplicate field"),
            ] {
                if let Some(rest) = msg.strip_prefix(prefix) {
                    if let Some((field, _)) = rest.split_once('`') {
                        if field.len() <= 40
                            && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            return format!("{what}: {field}");
                        }
                        return what.to_string();
                    }
                }
            }
            if msg.starts_with("invalid type") {
                return "a field has the wrong type".into();
            }
            "request body does not match the expected fields".into()
        }
    }
}

/// Total size of request header names and values accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A sane incoming id is kept so logs line up across services; anything else is replaced.
fn request_id(req: &ServiceRequest) -> (RequestId, HeaderValue) {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        if let Some(id) = RequestId::parse(v.as_bytes()) {
            return (id, v.clone());
        }
    }
    let id = RequestId::generate();
    let header =
        HeaderValue::from_str(id.as_str()).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    (id, header)
}

/// Request id on every log line and response, nosniff on every response, and the request metrics
/// (labelled by route template, never the raw path).
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = std::time::Instant::now();
    let (id, id_header) = request_id(&req);
    // The HTTP layer allows up to 128 KiB of headers; no client of this API needs more than a
    // fraction of that, so anything bigger is refused before any handler runs.
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        let (req, _) = req.into_parts();
        let mut res = ApiError::HeadersTooLarge(MAX_HEADER_BYTES).error_response();
        res.headers_mut().insert(X_REQUEST_ID.clone(), id_header);
        res.headers_mut().insert(
            actix_web::http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        return Ok(ServiceResponse::new(req, res).map_into_right_body());
    }
    // Responses to a request that carries credentials are about that caller: no cache (browser,
    // proxy, CDN) may keep them. Error responses set no-store themselves.
    let authenticated = req.headers().contains_key(header::AUTHORIZATION);
    let method = req.method().clone();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // The request id is on every line logged while the request runs; method and route are on
    // the line that ends it.
    let mut res = InRequest::new(id.clone(), async move { next.call(req).await })
        .await?
        .map_into_left_body();
    let status = res.status();
    let elapsed = start.elapsed();
    let route_metrics = res.request().app_data::<RouteMetrics>();
    if let Some(state) = &state {
        let metrics = &state.app.metrics;
        match route_metrics {
            Some(r) => r.observe(metrics, &method, status, elapsed.as_secs_f64()),
            None => observe_unmatched(metrics, &method, status, elapsed.as_secs_f64()),
        }
    }
    let route = route_metrics.map_or("unmatched", |r| r.route.as_str());
    telemetry::in_request(Some(id), || {
        let micros = elapsed.as_micros() as u64;
        let (method, route, status) = (method.as_str(), route, status.as_u16());
        // The raw path (never a metric label), the client and the authenticated user: computed
        // only when the line is written (tracing evaluates fields of enabled events only).
        let req = res.request();
        let path = req.path();
        let client_ip = || state.as_ref().and_then(|s| s.client_ip(req));
        let user = || {
            req.extensions()
                .get::<RequestUser>()
                .map(|u| tracing::field::display(u.0))
        };
        // One line, at a level by status class.
        macro_rules! end_line {
            ($level:expr, $message:literal) => {
                tracing::event!(
                    $level,
                    method,
                    route,
                    path,
                    status,
                    micros,
                    client_ip = client_ip().as_deref(),
                    user_id = user(),
                    $message
                )
            };
        }
        match status {
            500..=599 => end_line!(tracing::Level::WARN, "request failed"),
            400..=499 => end_line!(tracing::Level::INFO, "request refused"),
            _ => end_line!(tracing::Level::DEBUG, "request served"),
        }
    });
    let headers = res.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), id_header);
    if authenticated {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        actix_web::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}
