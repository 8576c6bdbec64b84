//! The network edge: a hyper 1.x HTTP server and a tonic gRPC server over the library's
//! [`Host`], sharing one serving core (`service.rs`: admission, readiness, request ids, the
//! request context) and one shutdown. It uses the `tessera` library's public API only (the fuzz
//! targets also call the model files' parsers in its `internals`). Cargo
//! features: `grpc` (the gRPC listener: `grpc/`, `oip/grpc.rs`), `otlp` (the trace exporter in
//! `telemetry.rs`); HTTP is always served.
//!
//! The server listens at once and loads models and guests in the background; `/readyz`
//! answers 503 and gRPC health NOT_SERVING until they are loaded. SIGINT/SIGTERM stop
//! accepting on every listener, let in-flight requests finish within
//! `limits.shutdown_grace_ms`, and return.

/// The fuzz targets' entry points (`fuzz/`), also replayed over the committed corpus by the tests.
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "grpc")]
mod grpc;
mod http;
mod oip;
mod router;
mod service;
mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use tessera::config::Config;
use tessera::metrics::Metrics;
use tessera::{BuildError, Host};

#[cfg(feature = "grpc")]
pub use grpc::code_for;
pub use http::status_for;
use service::{AppState, Listener};
pub use service::{REQUEST_ID, REQUEST_TIMEOUT_MS};
pub use telemetry::{Telemetry, init_telemetry};

/// The sockets [`run`] serves on.
pub struct Listeners {
    pub http: TcpListener,
    /// `None`: no gRPC.
    pub grpc: Option<TcpListener>,
    /// The admin routes without a token; `None`: none.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.addr` and, unless it is off, `config.grpc_addr`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let http = TcpListener::bind(config.addr).await.with_context(|| format!("cannot listen on {}", config.addr))?;
        let grpc =
            match config.grpc_addr {
                // The default address means "gRPC where this build has it".
                #[cfg(not(feature = "grpc"))]
                Some(tessera::config::DEFAULT_GRPC_ADDR) => None,
                #[cfg(not(feature = "grpc"))]
                Some(addr) => anyhow::bail!(
                    "grpc_addr = {addr}, but this build of tessera has no gRPC server (built without the `grpc` \
                     feature): set grpc_addr = \"off\" (--grpc-addr off) or use a full build"
                ),
                #[cfg(feature = "grpc")]
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen for gRPC on {addr} (grpc_addr; \"off\" turns gRPC off)")
                })?),
                None => None,
            };
        let admin =
            match config.admin_addr {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen for admin on {addr} (admin_addr; \"off\" turns it off)")
                })?),
                None => None,
            };
        Ok(Listeners { http, grpc, admin })
    }
}

/// Runs the server on `config.addr` (HTTP) and `config.grpc_addr` until SIGINT or SIGTERM
/// (blocking).
pub fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tessera-io").build()?;
    let result = runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        run(listeners, config, shutdown_signal()).await
    });
    // Guest calls stop at their epoch deadline, so blocking tasks end within one deadline.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Serves on `listeners` until `shutdown` resolves, then drains all of them. Models and
/// guests load in the background; a load failure stops the server with that error.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Listeners { http: listener, grpc: grpc_listener, admin: admin_listener } = listeners;
    let addr: SocketAddr = listener.local_addr()?;
    let grpc_addr = grpc_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let state = Arc::new(AppState {
        host: OnceLock::new(),
        places: Arc::new(Semaphore::new(config.limits.concurrent_requests() as usize)),
        watch: OnceLock::new(),
        metrics: Arc::new(Metrics::new()),
        config,
    });
    // Tests and scripts read these lines to learn the ports (`--addr 127.0.0.1:0`).
    println!("tessera listening on http://{addr}");
    if let Some(grpc_addr) = grpc_addr {
        println!("tessera listening on grpc://{grpc_addr}");
    }
    if let Some(admin_addr) = admin_addr {
        println!("tessera listening on admin http://{admin_addr}");
    }
    tracing::info!(%addr, grpc_addr = ?grpc_addr, admin_addr = ?admin_addr, "listening; loading models and guests");

    // Every listener stops when this turns true.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    #[cfg(feature = "grpc")]
    let (health, grpc_server) = {
        let (health, health_service) = tonic_health::server::health_reporter();
        router::set_health(&health, false).await;
        let server =
            grpc_listener.map(|l| tokio::spawn(router::serve_grpc(l, state.clone(), health_service, stop_signal())));
        (health, server)
    };
    #[cfg(not(feature = "grpc"))]
    let _ = (grpc_listener, stop_signal);

    // Turned on at shutdown: a model load probe still running is stopped, so a server told to
    // stop while it loads exits within one in-process load instead of after every probe.
    let cancel_loading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (state, cancel) = (state.clone(), cancel_loading.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let host = Host::builder()
                .config(state.config.clone())
                .metrics(state.metrics.clone())
                .cancel_loading(cancel.clone())
                .build()?;
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            tracing::info!(
                models = ?host.models().iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                default_model = host.default_model().as_deref().unwrap_or("(none: requests must name one)"),
                load_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            let host = Arc::new(host);
            if state.config.watch {
                match host.watch() {
                    Ok(guard) => {
                        let _ = state.watch.set(guard);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "not watching for changes; POST /v1/admin/reload still reloads")
                    }
                }
            }
            let _ = state.host.set(host);
            Ok::<(), BuildError>(())
        })
    };
    let load_failed = async {
        match loader.await {
            Ok(Ok(())) => {
                #[cfg(feature = "grpc")]
                router::set_health(&health, true).await;
                std::future::pending::<anyhow::Error>().await
            }
            Ok(Err(e)) => anyhow::Error::new(e).context("cannot load models and guests"),
            Err(e) => anyhow::anyhow!("the loader panicked: {e}"),
        }
    };
    tokio::pin!(shutdown, load_failed);

    let graceful = GracefulShutdown::new();
    let limits = &state.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper enforces header_read_timeout only with a timer; it also runs while a keep-alive
    // connection waits for its next request, so it is the idle timeout too (hyper 1.12,
    // proto/h1/conn.rs `poll_read_head`).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    builder.http2().timer(TokioTimer::new());
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let outcome = loop {
        let admin_accept = async {
            match &admin_listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = async {
                tokio::select! {
                    a = listener.accept() => (a, Listener::Main),
                    a = admin_accept => (a, Listener::Admin),
                }
            } => {
                let (accepted, kind) = accepted;
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the cap, close at once: a flood of idle sockets must not starve the
                // file descriptors and memory that admitted requests need.
                let Ok(connection) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max_connections = limits.max_connections, "connection refused: at max_connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| router::handle(state.clone(), req, peer, kind));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    drop(connection);
                });
            }
            () = &mut shutdown => break Ok(()),
            e = &mut load_failed => break Err(e),
        }
    };
    drop(listener);
    drop(admin_listener);
    cancel_loading.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop.send(true);
    #[cfg(feature = "grpc")]
    router::set_health(&health, false).await;
    let grace = Duration::from_millis(state.config.limits.shutdown_grace_ms);
    tracing::info!(grace_ms = grace.as_millis() as u64, "stopped accepting; draining in-flight requests");
    let drained = async {
        graceful.shutdown().await;
        #[cfg(feature = "grpc")]
        if let Some(server) = grpc_server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the gRPC server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "the gRPC server task failed"),
            }
        }
    };
    tokio::select! {
        () = drained => tracing::info!("drained; exiting"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over with requests still running; exiting"),
    }
    outcome
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
