//! The connection layer of `signet serve`: TCP accept under a connection
//! limit, the mutual-TLS handshake under a deadline, the caller's identity
//! attached to every request, HTTP/1.1 keep-alive with idle and header
//! deadlines, and a graceful shutdown.
//!
//! # Model
//!
//! - **Connection limit.** A permit of a `max_connections` semaphore is
//!   taken *before* `accept`, so connections beyond the limit wait in the
//!   kernel's listen backlog (their handshake simply does not start) rather
//!   than being accepted and dropped. The permit is held by the connection's
//!   task and released when it ends, whatever the reason.
//! - **Handshake.** rustls runs under `handshake_timeout`; a failure or a
//!   timeout is logged (peer address and reason) and the socket dropped.
//!   Nothing that is not TLS gets an HTTP answer.
//! - **Identity.** The verified leaf certificate is read once per
//!   connection ([`super::tls::peer_identity`]), resolved against the
//!   `[[clients]]` rules ([`Caller::resolve`]) and put into every request's
//!   extensions as `Arc<Caller>`, beside axum's `ConnectInfo<SocketAddr>`.
//! - **Deadlines.** hyper's `header_read_timeout` bounds the time to read a
//!   request head. In hyper 1.x (checked against 1.12) that timer starts
//!   whenever the connection waits for a head, including between requests
//!   on a keep-alive connection, so an idle keep-alive connection is already
//!   closed after `header_timeout`. `idle_timeout` is enforced here as
//!   well, independently of hyper's behaviour: a per-connection watchdog
//!   closes (gracefully) a connection with no request in flight and no
//!   request started or finished for `idle_timeout`. An idle connection is
//!   therefore closed after at most `min(header_timeout, idle_timeout)`.
//! - **Shutdown.** When the `shutdown` future resolves the listener is
//!   closed (new connections are refused), every connection is told to
//!   finish its in-flight request and close, and `serve` waits up to
//!   `shutdown_grace` for them before aborting the rest.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerSettings;
use crate::identity::{Caller, ClientRule};

/// The connection-level settings of `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time from accept to a completed TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to read a request head (also the longest wait for the next
    /// request on a keep-alive connection, see the module documentation).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl From<&ServerSettings> for ServeOptions {
    fn from(s: &ServerSettings) -> ServeOptions {
        ServeOptions {
            max_connections: s.max_connections,
            handshake_timeout: s.handshake_timeout,
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            shutdown_grace: s.shutdown_grace,
        }
    }
}

/// Serves `app` over mutual TLS on `listener` until `shutdown` resolves,
/// then drains connections for up to `opts.shutdown_grace`.
///
/// Returns an error only if the listener itself fails in a way that retrying
/// cannot fix; per-connection failures are logged and never end the loop.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    rules: Arc<[ClientRule]>,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        while tasks.try_join_next().is_some() {}

        // Take a permit first: beyond the limit, connections stay queued
        // in the kernel instead of being accepted.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off a little
                    // rather than spin; the listener itself stays usable.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            acceptor: acceptor.clone(),
            rules: rules.clone(),
            app: app.clone(),
            opts,
            stop: stop_rx.clone(),
        };
        tasks.spawn(async move {
            conn.run(stream, peer).await;
            drop(permit);
        });
    }

    drop(listener);
    let open = tasks.len();
    tracing::info!(connections = open, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            grace_ms = opts.shutdown_grace.as_millis() as u64,
            "shutdown grace elapsed: closing the remaining connections"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// What one connection's task needs.
struct Connection {
    acceptor: TlsAcceptor,
    rules: Arc<[ClientRule]>,
    app: Router,
    opts: ServeOptions,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let tls =
            match tokio::time::timeout(self.opts.handshake_timeout, self.acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(peer = %peer, reason = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        peer = %peer,
                        timeout_ms = self.opts.handshake_timeout.as_millis() as u64,
                        "TLS handshake timed out"
                    );
                    return;
                }
            };
        if *self.stop.borrow() {
            return;
        }

        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        let Some(leaf) = leaf else {
            // Cannot happen with a verifier that requires a certificate.
            tracing::warn!(peer = %peer, "connection without a client certificate: closed");
            return;
        };
        let identity = match super::tls::peer_identity(leaf) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(
                    peer = %peer,
                    reason = %e,
                    "verified client certificate could not be read: closed"
                );
                return;
            }
        };
        let caller = Arc::new(Caller::resolve(identity, &self.rules));
        tracing::debug!(
            peer = %peer,
            actor = %caller.actor(),
            serial = %caller.identity.serial_hex,
            "connection established"
        );

        let activity = Arc::new(Activity::new());
        let service = ConnService {
            app: self.app,
            caller,
            peer,
            activity: activity.clone(),
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.opts.header_timeout)
            .keep_alive(true);
        let mut conn =
            pin!(builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service)));
        let idle_timeout = self.opts.idle_timeout;
        let mut idle = pin!(activity.idle(idle_timeout));
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, reason = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.stop.wait_for(|stop| *stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = &mut idle, if !closing => {
                    tracing::debug!(peer = %peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests in flight on one connection and when one last started or ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
            } else if self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            } else {
                // A request has run for longer than `timeout`: its end
                // moves `last`, so look again a timeout later.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

/// Marks one request in flight; ends it when dropped (also on cancel).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The router, seen from one connection: adds the caller and the peer
/// address to each request and keeps the connection's activity.
#[derive(Clone)]
struct ConnService {
    app: Router,
    caller: Arc<Caller>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl tower::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.caller.clone());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let guard = self.activity.begin();
        let response = tower::ServiceExt::oneshot(self.app.clone(), req);
        Box::pin(async move {
            let r = response.await;
            drop(guard);
            r
        })
    }
}
