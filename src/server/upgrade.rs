//! The HTTP/1.1 WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's extractor
//! so that a connection keeps its raw byte stream. The relay needs it after refusing an
//! oversized frame: the rest of that frame is still arriving, and closing a socket with unread
//! input makes the kernel reset the connection, which can destroy the close frame (1009) before
//! the client reads it. With the raw stream, the connection reads and discards the rest first.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Why a request to a WebSocket route cannot be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Connection: upgrade` / `Upgrade: websocket`: a plain HTTP request.
    NotWebSocket,
    /// A WebSocket version other than 13.
    Version,
    /// No usable `Sec-WebSocket-Key`.
    MissingKey,
    /// The HTTP connection cannot be taken over (not HTTP/1.1).
    NotUpgradable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, reason) = match self {
            Self::NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "this route only accepts WebSocket connections (Connection: upgrade, \
                 Upgrade: websocket)",
            ),
            Self::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "only WebSocket version 13 is supported",
            ),
            Self::MissingKey => (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"),
            Self::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ),
        };
        let mut response = (status, reason).into_response();
        if self == Self::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// An accepted WebSocket connection over the upgraded HTTP connection. Boxed: the stream is
/// ~330 bytes, and inline it would also sit, moved-from, in every future that takes it as an
/// argument for as long as the connection lives.
pub type Socket = Box<WebSocketStream<TokioIo<Upgraded>>>;

/// A request that asked for a WebSocket upgrade and may be answered with one.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl Upgrade {
    /// Checks the upgrade headers; a request that is not a WebSocket upgrade gets the reason.
    pub fn from_request(request: &mut Request) -> Result<Self, Refusal> {
        let headers = request.headers();
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(Refusal::NotWebSocket);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(Refusal::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Refusal::MissingKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| Refusal::MissingKey)?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refusal::NotUpgradable)?;
        Ok(Self { accept, on_upgrade })
    }

    /// The `101 Switching Protocols` response, and the connection it leads to: a future that
    /// resolves once the client has the response and the stream is a WebSocket (`None` if the
    /// upgrade failed).
    pub fn accept(
        self,
        config: WebSocketConfig,
    ) -> (Response, impl Future<Output = Option<Socket>> + Send) {
        let connection = async move {
            match self.on_upgrade.await {
                Ok(upgraded) => Some(Box::new(
                    WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await,
                )),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    None
                }
            }
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        (response, connection)
    }
}

/// Whether the comma-separated header `name` holds `token` (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does for `upgrade`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}
