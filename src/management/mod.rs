//! The management HTTP API, RabbitMQ's (port 15672): the JSON shapes,
//! status codes and access rules of RabbitMQ's management plugin, so that
//! rabbitmqadmin, KEDA's scaler, Terraform's provider and other clients of
//! it work unchanged. It sits beside `server` and above `broker`: it reads
//! the broker's listings and the sampler's snapshot, and changes things
//! through the same broker calls AMQP clients use.
//!
//! Where each endpoint lives: `overview` (overview, whoami, health
//! checks, aliveness, connections, channels, consumers); `cluster` (nodes,
//! the metadata store); `queues` (and
//! getting messages), `exchanges` (and publishing), `bindings`; `paging`
//! the listing parameters; `settings` (vhosts, policies, limits,
//! definitions); `users` (users, permissions, topic permissions); `json`
//! the shapes shared
//! by several of them; `compat` what tools probe (cluster name, feature
//! flags, parameters…); `console` the web console's files; `prometheus`
//! the metrics endpoint, on a port of its own.

mod bindings;
mod cluster;
mod compat;
mod console;
mod exchanges;
pub mod json;
mod overview;
mod paging;
mod prometheus;
mod queues;
mod settings;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use crate::access::Access;
use crate::broker::Broker;

/// Where the broker listens, for /api/overview's `listeners` and the
/// port-listener health check.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub amqp: Option<SocketAddr>,
    pub management: Option<SocketAddr>,
    pub prometheus: Option<SocketAddr>,
}

/// What every handler gets.
#[derive(Clone)]
pub struct Api {
    pub broker: Arc<Broker>,
    pub listeners: Arc<Listeners>,
    /// This node of a cluster (None for a single node).
    pub cluster: Option<Arc<crate::cluster::node::ClusterNode>>,
    /// Its member of the metadata group.
    pub metadata: Option<Arc<crate::cluster::metadata::MetadataGroup>>,
    /// The quorum queue groups it is a member of.
    pub queues: Option<Arc<crate::cluster::quorum::QueueGroups>>,
}

/// Serves the API on `listener` until the process ends.
/// Serves the management API (over TLS with `tls`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let app = router(api).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => axum::serve(listener, app).await,
        Some(tls) => {
            use axum::serve::ListenerExt;
            // tap_io gives the TLS listener's peer address to ConnectInfo.
            axum::serve(TlsListener::new(listener, tls, "management API")?.tap_io(|_| {}), app).await
        }
    }
}

/// An HTTP listener whose connections are TLS streams, their handshakes
/// done by [`crate::tls::accept_loop`].
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        what: &'static str,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let accepted = crate::tls::accept_loop(listener, tls, std::time::Duration::from_secs(10), what);
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn router(api: Api) -> Router {
    Router::new()
        .merge(overview::routes())
        .merge(cluster::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(settings::routes())
        .merge(users::routes())
        .merge(console::routes())
        .merge(compat::routes())
        .fallback(|| async { ApiError::not_found() })
        .with_state(api)
}

/// An error reply: RabbitMQ's `{"error": ..., "reason": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> ApiError {
        ApiError { status, error: error.to_string(), reason: reason.into() }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// An authenticated caller that may not do this: 401 with the British
    /// spelling, as RabbitMQ answers (not 403).
    pub fn not_authorised(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    pub fn forbidden() -> ApiError {
        ApiError::not_authorised("Not administrator user")
    }

    /// No credentials at all: an empty 401 asking for them.
    fn credentials_needed() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "", "")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.error.is_empty() {
            let mut response = StatusCode::UNAUTHORIZED.into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""));
            return response;
        }
        (self.status, axum::Json(json!({"error": self.error, "reason": self.reason}))).into_response()
    }
}

/// An AMQP refusal as an HTTP error: 404 for what is missing, 503 when a
/// node of a cluster could not commit a change (no majority), 400 for the
/// rest (as RabbitMQ's management API answers them).
impl From<crate::broker::AmqpError> for ApiError {
    fn from(e: crate::broker::AmqpError) -> ApiError {
        use crate::protocol::reply;
        let reason = e.text.split_once(" - ").map_or(e.text.as_str(), |(_, r)| r).to_string();
        match e.code {
            reply::NOT_FOUND => ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", reason),
            reply::ACCESS_REFUSED => ApiError::not_authorised(reason),
            reply::INTERNAL_ERROR => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason),
            _ => ApiError::bad_request(reason),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A refused change where the API answers a bare 404 for what is missing
/// (as RabbitMQ does for a DELETE of an unknown user or vhost).
pub fn change_refused(e: crate::broker::AmqpError) -> ApiError {
    if crate::broker::changes::is_not_found(&e) { ApiError::not_found() } else { ApiError::from(e) }
}

/// The authenticated caller of a request (HTTP basic auth) and what its
/// tags let it do, as in RabbitMQ: `management` (and `policymaker`) see
/// the vhosts they have permissions in; `monitoring` sees everything;
/// `administrator` may do everything.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
}

impl Caller {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn is_admin(&self) -> bool {
        self.has_tag("administrator")
    }

    /// Sees every vhost's objects and every user's connections.
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has_tag("monitoring")
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::forbidden()) }
    }

    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() { Ok(()) } else { Err(ApiError::not_authorised("Not monitor user")) }
    }

    /// May see (and act in) this vhost: it has permissions there, or is a monitor.
    pub fn sees_vhost(&self, api: &Api, vhost: &str) -> bool {
        self.is_monitor() || api.broker.access().may_enter(&self.name, vhost)
    }

    pub fn require_vhost(&self, api: &Api, vhost: &str) -> ApiResult<()> {
        if !api.broker.vhost_exists(vhost) {
            return Err(ApiError::not_found());
        }
        if self.is_admin() || api.broker.access().may_enter(&self.name, vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised("User not authorised to access virtual host"))
        }
    }

    /// A resource permission, checked as AMQP checks it (administrators too,
    /// as in RabbitMQ).
    pub fn require(
        &self,
        api: &Api,
        vhost: &str,
        access: Access,
        kind: crate::access::ResourceKind,
        name: &str,
    ) -> ApiResult<()> {
        if api.broker.access().permitted(&self.name, vhost, access, name) {
            Ok(())
        } else {
            let reason = crate::access::refusal(kind, name, vhost, &self.name, access);
            Err(ApiError::not_authorised(reason))
        }
    }
}

/// A JSON request body, whatever its content type (RabbitMQ reads bodies
/// so); a body that is not the JSON expected is a 400 with the reason.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// As [`JsonBody`], an empty body reading as the type's default.
pub struct JsonOrEmpty<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default, S: Send + Sync> axum::extract::FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        serde_json::from_slice(&bytes).map(JsonOrEmpty).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// Names and routing keys are AMQP short strings (at most 255 bytes), as
/// the log stores them: longer ones are refused, never cut.
pub fn check_short(what: &str, value: &str) -> ApiResult<()> {
    if value.len() > 255 {
        return Err(ApiError::bad_request(format!("{what} is longer than 255 bytes ({} bytes)", value.len())));
    }
    Ok(())
}

impl Caller {
    /// Topic permission on a routing key of a topic exchange, as AMQP checks it.
    pub fn require_topic(&self, api: &Api, vhost: &str, exchange: &str, key: &str, write: bool) -> ApiResult<()> {
        let access = api.broker.access();
        if !access.any_topic_permissions() || !api.broker.is_topic_exchange(vhost, exchange) {
            return Ok(());
        }
        if access.topic_permitted(&self.name, vhost, exchange, write, key) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(crate::access::topic_refusal(key, exchange, vhost, &self.name, write)))
        }
    }
}

/// Tags that open the management API at all.
const MANAGEMENT_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(header) = header else { return Err(ApiError::credentials_needed()) };
        let Some((user, password)) = basic_credentials(header) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized"));
        };
        let access = api.broker.access();
        if !access.authenticate(&user, &password) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized"));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        if access.loopback_only(&user) && !peer.is_some_and(|p| crate::server::is_loopback(&p)) {
            return Err(ApiError::not_authorised("User can only log in via localhost"));
        }
        let tags = access.user(&user).map(|u| u.tags).unwrap_or_default();
        if !tags.iter().any(|t| MANAGEMENT_TAGS.contains(&t.as_str())) {
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(Caller { name: user, tags })
    }
}

/// (user, password) from an `Authorization: Basic …` header.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

pub use crate::metrics::node_name;

/// Serves the Prometheus metrics (RabbitMQ's port 15692) on `listener`.
/// Serves the Prometheus endpoint (over TLS with `tls`).
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    api: Api,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let app = prometheus::routes().with_state(api);
    match tls {
        None => axum::serve(listener, app).await,
        Some(tls) => axum::serve(TlsListener::new(listener, tls, "Prometheus endpoint")?, app).await,
    }
}
