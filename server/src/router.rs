//! Which protocol answers what. HTTP: every request's id, span, metrics and log line, then
//! `/v2` to the Open Inference Protocol's REST face (`oip/rest.rs`) and everything else to
//! Tessera's HTTP API (`http/`); the admin listener answers only the admin routes and probes.
//! gRPC: the services on `grpc_addr` (the seed's, `grpc/`; the OIP's, `oip/grpc.rs`; health;
//! reflection) and its connection cap. Above the protocol folders, so that none of them needs
//! another's routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ::http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::{Instrument, Span};

use super::http::{self, Body, HttpError, discard_unread, endpoint, request_id};
use super::oip;
use super::service::{self, REQUEST_ID};
use super::telemetry::{TRACEPARENT, TRACESTATE, TraceHeaders};
use crate::service::{AppState, Listener};
#[cfg(feature = "grpc")]
pub(super) use grpc_listener::{serve_grpc, set_health};
use tessera::Stage;
use tessera::metrics::Protocol;

/// Paths polled by probes and scrapers: logged at debug, not traced.
const PROBES: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"];

/// Every HTTP request on every listener: its id, span and metrics, the route that answers it,
/// and the log line.
pub(super) async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    listener: Listener,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let probe = PROBES.contains(&path.as_str());
    let endpoint = endpoint(&path);
    let span = if probe {
        Span::none()
    } else {
        let headers = req.headers();
        let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let trace = TraceHeaders { traceparent: header(TRACEPARENT), tracestate: header(TRACESTATE) };
        service::request_span(Protocol::http, &format!("{method} {endpoint}"), &request_id, trace)
    };
    let response = route(&state, req, listener, start, &request_id).instrument(span.clone()).await;
    let failure =
        response.as_ref().err().map(|e| (e.code, e.status.is_client_error(), e.stage.unwrap_or(Stage::Admission)));
    state.count(Protocol::http, endpoint, start, failure);
    if let Err(e) = &response {
        service::end_request_span(
            &span,
            e.status.as_u16().into(),
            Some((e.code, e.status.is_client_error(), &e.message)),
        );
    }
    let oip = path == "/v2" || path.starts_with("/v2/");
    let mut response =
        response.unwrap_or_else(|e| if oip { oip::rest::error_response(e) } else { e.into_response(&request_id) });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    span.record("status", status);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if probe {
        tracing::debug!(%method, %path, status, ms, request_id, "probe");
    } else if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, ms, request_id, %peer, "request failed");
    } else {
        tracing::info!(%method, %path, status, ms, request_id, "request");
    }
    Ok(response)
}

/// Answers one request on `listener`.
async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    listener: Listener,
    start: Instant,
    request_id: &str,
) -> Result<Response<Body>, HttpError> {
    let path = req.uri().path().to_string();
    if listener == Listener::Admin && !matches!(path.as_str(), "/v1/admin/reload" | "/healthz" | "/readyz") {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the admin listener serves /v1/admin/* only; {path} is on the main address"),
        ));
    }
    if path == "/v2" || path.starts_with("/v2/") {
        let (parts, mut body) = req.into_parts();
        let result = oip::rest::handle(state, &parts, &mut body, start, request_id).await;
        discard_unread(body, &parts.headers, state.config.limits.max_body_bytes);
        return result;
    }
    http::route(state, req, listener, start, request_id).await
}

/// The gRPC listener's services (with the `grpc` feature).
#[cfg(feature = "grpc")]
mod grpc_listener {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures_util::StreamExt;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};
    use tonic::server::NamedService;
    use tonic::transport::server::{Connected, TcpIncoming};
    use tonic_health::ServingStatus;
    use tonic_health::pb::health_server::{Health, HealthServer};
    use tonic_health::server::HealthReporter;

    use crate::grpc::{DESCRIPTORS, ImageRecognitionServiceServer, Recognition};
    use crate::oip::grpc::{GrpcInferenceServiceServer, Inference};
    use crate::service::AppState;

    /// Serves the gRPC services on `listener` until `shutdown` resolves, then waits for the
    /// calls in flight (the caller bounds that wait).
    pub(crate) async fn serve_grpc(
        listener: TcpListener,
        state: Arc<AppState>,
        health: HealthServer<impl Health>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // tonic's default is 4 MiB; images up to the HTTP body limit are accepted here too.
        let max_message = usize::try_from(state.config.limits.max_body_bytes).unwrap_or(usize::MAX);
        let max_connections = state.config.limits.max_connections;
        let recognition = ImageRecognitionServiceServer::new(Recognition { state: state.clone() })
            .max_decoding_message_size(max_message);
        let inference = GrpcInferenceServiceServer::new(Inference { state })
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(DESCRIPTORS)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1 for current tools, v1alpha for the ones most clients still ship (grpcio-reflection).
        let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
        let incoming = capped(TcpIncoming::from(listener).with_nodelay(Some(true)), max_connections);
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(recognition)
            .add_service(inference)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// `incoming` with at most `max` connections open at once: one more is closed as soon as it is
    /// accepted (as on the HTTP listener, which has its own `max`), so a flood of idle sockets cannot
    /// take the file descriptors and memory that the calls in flight need.
    fn capped(
        incoming: TcpIncoming,
        max: u32,
    ) -> impl futures_util::Stream<Item = std::io::Result<CappedStream>> + Send + 'static {
        let permits = Arc::new(Semaphore::new(max as usize));
        incoming.filter_map(move |accepted| {
            let next = match accepted {
                Ok(stream) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(Ok(CappedStream { stream, _permit: permit })),
                    Err(_) => {
                        tracing::warn!(peer = ?stream.peer_addr().ok(), max_connections = max, "gRPC connection refused: at max_connections");
                        None
                    }
                },
                Err(e) => Some(Err(e)),
            };
            std::future::ready(next)
        })
    }

    /// An accepted gRPC connection holding its place under `max_connections` until it closes.
    /// (tonic has no connection limit of its own; `concurrency_limit_per_connection` bounds calls.)
    pub(super) struct CappedStream {
        stream: TcpStream,
        _permit: OwnedSemaphorePermit,
    }

    impl Connected for CappedStream {
        type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

        fn connect_info(&self) -> Self::ConnectInfo {
            self.stream.connect_info()
        }
    }

    impl AsyncRead for CappedStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CappedStream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    /// `grpc.health.v1`: the whole server ("") and each service are SERVING once models and guests
    /// are loaded and until shutdown begins, NOT_SERVING otherwise.
    pub(crate) async fn set_health(health: &HealthReporter, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        health.set_service_status("", status).await;
        health.set_service_status(<ImageRecognitionServiceServer<Recognition> as NamedService>::NAME, status).await;
        health.set_service_status(<GrpcInferenceServiceServer<Inference> as NamedService>::NAME, status).await;
    }
}
