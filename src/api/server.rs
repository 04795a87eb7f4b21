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
//! - **Buffers.** A request head is at most [`REQUEST_HEAD_MAX`], and
//!   hyper buffers at most [`CONNECTION_BUFFER_MAX`] per connection.
//! - **Deadlines.** hyper's `header_read_timeout` bounds the time to read a
//!   request head. In hyper 1.x (checked against 1.12) that timer starts
//!   whenever the connection waits for a head, including between requests
//!   on a keep-alive connection, so an idle keep-alive connection is already
//!   closed after `header_timeout`. `idle_timeout` is enforced here as
//!   well, independently of hyper's behaviour: a per-connection watchdog
//!   closes (gracefully) a connection with no request in flight and no
//!   request started or finished for `idle_timeout`. An idle connection is
//!   therefore closed after at most `min(header_timeout, idle_timeout)`.
//!   A graceful close finishes the answer being written; if that does not
//!   happen within `header_timeout` (a client that does not read), the
//!   connection is dropped, so every connection ends.
//! - **Bodies.** [`guard_bodies`] (applied by `signet serve` around the
//!   router) makes a body over `server.body_limit_bytes` fail as too
//!   large (413) only once the client has sent all of it, reading and
//!   discarding the rest (up to [`DISCARD_BYTES_MAX`] and within the body
//!   deadline), so every HTTP client, even one that must finish sending
//!   before it reads, gets its answer, and the connection stays usable. A
//!   declared `Content-Length` over [`DISCARD_BYTES_MAX`] fails at once.
//!   Either way a body over the limit is never waited for until the
//!   request timeout answers 503. A body still incomplete `header_timeout`
//!   after its head fails too (400, `field` `body`), so a client trickling
//!   its body does not hold the connection and an in-flight slot until the
//!   request timeout.
//! - **Lingering close.** hyper closes a connection after answering a
//!   request whose body it did not read to the end (refused as too large
//!   or too slow). Then the client may still be sending, and a socket
//!   closed with unread data sends a reset that can destroy the answer
//!   before the client reads it. So such a connection is closed the way
//!   nginx does: close_notify and FIN, then what the client still sends is
//!   read and discarded until it closes, for at most `header_timeout`.
//! - **Shutdown.** When the `shutdown` future resolves the listener is
//!   closed (new connections are refused), every connection is told to
//!   finish its in-flight request and close, and `serve` waits up to
//!   `shutdown_grace` for them before aborting the rest.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http_body_util::{Full, Limited};
use hyper::Request;
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerSettings;
use crate::identity::{Caller, ClientRule};

/// The largest request head (request line and headers): 32 KiB; this
/// API's heads are a few hundred bytes. A larger head is answered 431 by
/// hyper, without a body, and the connection closed.
pub const REQUEST_HEAD_MAX: usize = 32 * 1024;

/// The most hyper buffers per connection (its read and write buffers
/// each): 64 KiB. hyper's default (~408 KiB, which also bounds a head when
/// no head limit is set) let each of `max_connections` clients park that
/// much in an unfinished head for `header_timeout`: ~420 MiB with the
/// default 1024 connections.
pub const CONNECTION_BUFFER_MAX: usize = 64 * 1024;

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
            .max_header_size(REQUEST_HEAD_MAX)
            .max_buf_size(CONNECTION_BUFFER_MAX)
            .keep_alive(true);
        // hyper gets the stream inside a `HandBack`, which returns it when
        // hyper is done with it (after its own flush, close_notify and
        // FIN), for a lingering close.
        let back = Arc::new(Mutex::new(None));
        let io = HandBack {
            inner: Some(tls),
            back: back.clone(),
        };
        let idle_timeout = self.opts.idle_timeout;
        // A graceful close still finishes the answer being written, and a
        // client that does not read it (pipelined requests for large
        // answers, never read) would hold the connection, and its
        // `max_connections` permit, for ever. So an idle connection told to
        // close gets `header_timeout` to do so and is then dropped. (At
        // shutdown, `serve` bounds the wait with `shutdown_grace`.)
        let linger = self.opts.header_timeout;
        {
            let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
            let mut idle = pin!(activity.idle(idle_timeout));
            let mut closing = false;
            let mut cut = pin!(tokio::time::sleep(linger));
            let mut cut_armed = false;
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
                        cut.as_mut().reset(Instant::now() + linger);
                        cut_armed = true;
                    }
                    () = &mut cut, if cut_armed => {
                        tracing::info!(
                            peer = %peer,
                            linger_ms = linger.as_millis() as u64,
                            "idle connection did not close in time (the client does not read): dropped"
                        );
                        return;
                    }
                }
            }
        } // hyper's connection is dropped here: the stream is back.
        if activity.unread_body.load(Ordering::Relaxed) {
            let stream = match back.lock() {
                Ok(mut slot) => slot.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(tls) = stream {
                lingering_close(tls, linger, peer).await;
            }
        }
    }
}

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The connection's stream as hyper sees it: when hyper drops it, the
/// stream goes to `back` instead of being closed, so the connection's task
/// can close it lingering. (hyper can give its stream back only without
/// flushing its own buffer first, which could lose the end of an answer.)
struct HandBack {
    /// Always `Some` until dropped.
    inner: Option<ServerTls>,
    back: Arc<Mutex<Option<ServerTls>>>,
}

impl Drop for HandBack {
    fn drop(&mut self) {
        let stream = self.inner.take();
        match self.back.lock() {
            Ok(mut slot) => *slot = stream,
            Err(poisoned) => *poisoned.into_inner() = stream,
        }
    }
}

impl HandBack {
    fn stream(&mut self) -> io::Result<Pin<&mut ServerTls>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for HandBack {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for HandBack {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The most of one request the server reads only to discard it (the
/// rest of a body over the limit, or what a client still sends in a
/// lingering close): the largest `server.body_limit_bytes`.
pub const DISCARD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Closes a connection whose last request body was not read to its end (an
/// answer given before the body was read: its content type, the caller's
/// role, the route, a body too slow or declared over
/// [`DISCARD_BYTES_MAX`]): the client may still be sending, and closing a
/// socket with unread data makes the kernel send a reset, which can reach
/// the client before it reads the answer (an HTTP client then reports a
/// broken connection, not the answer). So: the client is told we are done
/// (close_notify and FIN), then what it still sends is read and discarded
/// until it closes, for at most `linger` and [`DISCARD_BYTES_MAX`] bytes.
async fn lingering_close(mut tls: ServerTls, linger: Duration, peer: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let drained = tokio::time::timeout(linger, async move {
        // hyper has sent close_notify and FIN when it closed in order; after
        // an error it has not: this does it (or fails, harmlessly).
        let _ = tls.shutdown().await;
        let (mut tcp, _) = tls.into_inner();
        let mut scratch = [0u8; 8192];
        let mut total = 0usize;
        loop {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => {
                    total = total.saturating_add(n);
                    if total >= DISCARD_BYTES_MAX {
                        return total;
                    }
                }
            }
        }
    })
    .await;
    match drained {
        Ok(bytes) => tracing::debug!(peer = %peer, bytes, "lingering close done"),
        Err(_) => tracing::debug!(
            peer = %peer,
            linger_ms = linger.as_millis() as u64,
            "lingering close timed out"
        ),
    }
}

/// Requests in flight on one connection and when one last started or ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
    /// A request body was dropped before its end: hyper then closes the
    /// connection after the answer, and the close lingers.
    unread_body: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            unread_body: AtomicBool::new(false),
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
/// address to each request, and tracks the connection's activity and
/// whether a request body was left unread.
struct ConnService {
    app: Router,
    caller: Arc<Caller>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(|body| TrackedBody {
            inner: body,
            ended: false,
            activity: self.activity.clone(),
        });
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

/// A request body that tells its connection, when dropped, whether it was
/// read to its end (see [`lingering_close`]).
struct TrackedBody {
    inner: Incoming,
    ended: bool,
    activity: Arc<Activity>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            self.activity.unread_body.store(true, Ordering::Relaxed);
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every field is Unpin.
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request body of `app` in a `GuardedBody`: a body over
/// `limit` is read to its end (at most [`DISCARD_BYTES_MAX`]) and then
/// fails as too large, and a body not complete `timeout` after its head
/// fails (see the module documentation).
pub fn guard_bodies(app: Router, limit: usize, timeout: Duration) -> Router {
    app.layer(tower::util::MapRequestLayer::new(
        move |request: Request<Body>| {
            request.map(|body| Body::new(GuardedBody::new(body, limit, timeout)))
        },
    ))
}

/// A request body under the rules of [`guard_bodies`].
struct GuardedBody {
    inner: Body,
    limit: u64,
    timeout: Duration,
    /// `timeout` after the head was read.
    deadline: Instant,
    /// Made on the first wait for the client, so a body that is already
    /// buffered (or a request without one) never arms a timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The declared length was checked (on the first read, so a handler
    /// that never reads the body never sees an error).
    checked: bool,
    /// Bytes received so far.
    seen: u64,
    /// Over the limit: the rest is being read and discarded, and then
    /// the body fails as too large.
    discarding: bool,
}

/// Frames one poll discards before it yields to the runtime.
const DISCARD_FRAMES_PER_POLL: usize = 64;

impl GuardedBody {
    fn new(inner: Body, limit: usize, timeout: Duration) -> GuardedBody {
        GuardedBody {
            inner,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
            checked: false,
            seen: 0,
            discarding: false,
        }
    }

    fn too_large(&self) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        Poll::Ready(Some(Err(length_limit_error(
            self.seen.max(self.inner.size_hint().lower()),
            self.limit,
        ))))
    }
}

/// http_body_util's own `LengthLimitError`, which the body reader turns
/// into 413. Its type is `non_exhaustive`, so it is made the way `Limited`
/// makes it: one byte over a limit of 0.
fn length_limit_error(declared: u64, limit: u64) -> axum::BoxError {
    let mut over = Limited::new(Full::new(Bytes::from_static(b"x")), 0);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut over).poll_frame(&mut cx) {
        Poll::Ready(Some(Err(e))) => e,
        // Not reached (a full body is ready at once); the reader also
        // recognizes the words "length limit" in an error.
        _ => Box::new(DeclaredTooLong { declared, limit }),
    }
}

#[derive(Debug)]
struct DeclaredTooLong {
    declared: u64,
    limit: u64,
}

impl fmt::Display for DeclaredTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "length limit exceeded: Content-Length {} is over {} bytes",
            self.declared, self.limit
        )
    }
}

impl std::error::Error for DeclaredTooLong {}

/// The body did not arrive in time.
#[derive(Debug)]
struct BodyTimeout(Duration);

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the body did not arrive within {} ms of the request head (server.header_timeout_ms)",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        // Every field is Unpin (the timer is boxed).
        let this = self.get_mut();
        if !this.checked {
            this.checked = true;
            // With a Content-Length the hint is exact; a chunked body's
            // lower bound is 0 and its length is counted below.
            let declared = this.inner.size_hint().lower();
            if declared > DISCARD_BYTES_MAX as u64 {
                // Not worth reading (nor, likely, ever sent): refused at
                // once; the lingering close gives the client its answer.
                return this.too_large();
            }
            this.discarding = declared > this.limit;
        }
        for _ in 0..DISCARD_FRAMES_PER_POLL {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len());
                    this.seen = this
                        .seen
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    if this.seen > this.limit {
                        this.discarding = true;
                    }
                    if !this.discarding {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // Over the limit: the frame is dropped. A client
                    // that goes on past DISCARD_BYTES_MAX is refused now.
                    if this.seen > DISCARD_BYTES_MAX as u64 {
                        return this.too_large();
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                // The whole body was read: the client has sent everything
                // and will read the answer.
                Poll::Ready(None) if this.discarding => return this.too_large(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    // Waiting for the client: only now does the deadline
                    // matter.
                    let deadline = this.deadline;
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) if this.discarding => this.too_large(),
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        // Many frames discarded in one go: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_over_the_limit_is_limiteds_own_error() {
        let e = length_limit_error(10, 5);
        assert!(e.is::<http_body_util::LengthLimitError>(), "{e}");
    }
}
