//! A TCP proxy on 127.0.0.1 in front of one upstream address (PostgreSQL, usually), whose network the test
//! breaks at will — without touching the server behind it:
//!
//! - [`forward`](TcpProxy::forward): bytes flow both ways (the initial mode);
//! - [`blackhole`](TcpProxy::blackhole): every connection, existing or new, stays open but no byte moves in
//!   either direction — the client sees silence, as behind a half-open TCP connection to a vanished server or
//!   a partitioned network. New connections are accepted but not forwarded;
//! - [`cut`](TcpProxy::cut): every connection is closed and the port refuses new ones, as when the server is
//!   down;
//! - back to [`forward`](TcpProxy::forward): new connections work; connections that lived through a blackhole
//!   or were opened during it are closed (the server they talked to is gone, as after a failover);
//! - or [`heal`](TcpProxy::heal): as `forward`, but connections that lived through the blackhole carry on
//!   where they stopped (a network partition that healed; nothing was lost, only delayed).
//!
//! Mode changes take effect as soon as the proxy's tasks run (at once on a multi-threaded runtime, at the
//! caller's next `.await` on a current-thread one); the methods are not async, so they can be called from
//! anywhere (a hook, another task). Everything stops when the proxy is dropped.
//!
//! What a blackhole here cannot simulate: the proxy's own kernel still ACKs what the client sends (until the
//! buffers fill) and answers TCP keepalive probes, so only the client's *application-level* timeouts can
//! detect it — TCP keepalive and `TCP_USER_TIMEOUT` cannot. (A blackhole that defeats those needs a firewall
//! rule, which a test must not install.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long connecting to the upstream may take before the client's connection is closed.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with bytes and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Forward,
    Blackhole,
    Cut,
}

/// The mode, and the generation of connections allowed to forward: connections remember the generation they
/// were opened in; a cut, and a [`forward`](TcpProxy::forward) after a blackhole, start a new one (closing
/// the connections of the old).
#[derive(Debug, Clone, Copy)]
struct State {
    mode: ProxyMode,
    generation: u64,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 (see the module documentation). Dropping it closes its port and every connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    /// A listener bound by the test's thread on leaving `cut`, for the accept task to take over.
    rebound: Arc<Mutex<Option<std::net::TcpListener>>>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy on a free port of 127.0.0.1 in front of `upstream`, forwarding.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (state, watcher) = watch::channel(State { mode: ProxyMode::Forward, generation: 0 });
        let rebound = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, upstream, watcher, rebound.clone(), counters.clone()));
        TcpProxy { addr, upstream, state, rebound, counters, task }
    }

    /// A proxy in front of the host and port of a `postgres://` URL (port 5432 if it names none).
    pub async fn in_front_of(url: &str) -> TcpProxy {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("not a URL: {e}"));
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = parsed.port().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap_or_else(|e| panic!("cannot resolve {host}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("{host} resolves to no address"));
        Self::start(upstream).await
    }

    /// The proxy's address (127.0.0.1 and its port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port, for URLs.
    pub fn url_port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `url` with its host and port replaced by the proxy's (user, database and parameters kept).
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("not a URL: {e}"));
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.url_port())).unwrap();
        parsed.to_string()
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.state.borrow().mode
    }

    /// Client connections currently open at the proxy.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Forward bytes both ways. Leaving a blackhole this way closes every connection that lived through it or
    /// was opened during it (as after a failover); new connections work.
    pub fn forward(&self) {
        self.switch(ProxyMode::Forward, true);
    }

    /// Forward again after a blackhole, letting the connections that lived through it carry on where they
    /// stopped (a partition that healed); connections opened during it are forwarded now. After `cut`, the
    /// same as [`forward`](Self::forward).
    pub fn heal(&self) {
        self.switch(ProxyMode::Forward, false);
    }

    /// Stop moving bytes: every connection, existing or new, stays open and silent.
    pub fn blackhole(&self) {
        self.switch(ProxyMode::Blackhole, false);
    }

    /// Close every connection and refuse new ones (the port is closed until the next mode change).
    pub fn cut(&self) {
        self.switch(ProxyMode::Cut, false);
    }

    fn switch(&self, mode: ProxyMode, new_generation: bool) {
        let current = *self.state.borrow();
        let mut slot = self.rebound.lock().unwrap();
        if mode == ProxyMode::Cut {
            *slot = None;
        } else if current.mode == ProxyMode::Cut && slot.is_none() {
            // Bind the port again here, so it listens when this returns (a client connecting right after
            // `forward()` is not refused). std's bind sets SO_REUSEADDR: connections in TIME_WAIT do not stand
            // in the way.
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => {
                    listener.set_nonblocking(true).unwrap();
                    *slot = Some(listener);
                }
                // The accept task has not yet closed the listener it had before the cut, and now keeps it.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => panic!("the proxy cannot listen on {} again: {e}", self.addr),
            }
        }
        // A cut closes every connection, even if the next mode is set before the proxy's tasks see the cut.
        let leaving_blackhole = current.mode == ProxyMode::Blackhole && mode == ProxyMode::Forward;
        let closes_all = mode == ProxyMode::Cut || (new_generation && leaving_blackhole);
        let generation = current.generation + u64::from(closes_all);
        self.state.send_replace(State { mode, generation });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection's task.
        self.task.abort();
    }
}

/// Accepts connections while the mode is not `Cut`; each gets a task in `connections` (aborted with it).
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    rebound: Arc<Mutex<Option<std::net::TcpListener>>>,
    counters: Arc<Counters>,
) {
    let addr = listener.local_addr().unwrap();
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let current = *state.borrow_and_update();
        if current.mode == ProxyMode::Cut {
            listener = None;
        } else if listener.is_none() {
            listener = Some(relisten(addr, &rebound).await);
        }
        tokio::select! {
            biased;
            changed = state.changed() => {
                if changed.is_err() {
                    return; // the proxy was dropped
                }
            }
            accepted = async { listener.as_ref().unwrap().accept().await }, if listener.is_some() => {
                let Ok((client, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                counters.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(counters.clone());
                connections.spawn(connection(client, upstream, state.clone(), current.generation, guard));
            }
        }
    }
}

/// The listener [`TcpProxy::switch`] bound on leaving `cut`; if it found the port still held by the previous
/// listener (closed since), binds it here.
async fn relisten(addr: SocketAddr, rebound: &Mutex<Option<std::net::TcpListener>>) -> TcpListener {
    if let Some(listener) = rebound.lock().unwrap().take() {
        return TcpListener::from_std(listener).expect("register the proxy's listener");
    }
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                attempts += 1;
                assert!(attempts < 100, "the proxy cannot listen on {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection stopped forwarding.
enum Stop {
    /// The proxy was cut or dropped, or the connection belongs to a closed generation: close it.
    Close,
    /// A read or write failed.
    Failed,
}

/// Waits until this connection may move bytes (`Forward` in its generation); `Err` when it must close.
async fn gate(state: &mut watch::Receiver<State>, generation: u64) -> Result<(), Stop> {
    loop {
        let current = *state.borrow_and_update();
        match current.mode {
            ProxyMode::Forward if current.generation == generation => return Ok(()),
            ProxyMode::Forward | ProxyMode::Cut => return Err(Stop::Close),
            ProxyMode::Blackhole => state.changed().await.map_err(|_| Stop::Close)?,
        }
    }
}

/// One client connection: connects to the upstream once it may forward, then copies both ways.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    generation: u64,
    _open: OpenGuard,
) {
    // Accepted during a blackhole: stay silent until the mode allows this connection through.
    if gate(&mut state, generation).await.is_err() {
        return;
    }
    let server = tokio::select! {
        connected = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)) => {
            match connected {
                Ok(Ok(server)) => server,
                _ => return, // upstream down: the client sees its connection closed
            }
        }
        _ = state.wait_for(|s| s.mode == ProxyMode::Cut) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction stopping for a reason other than end of stream closes both (by dropping them).
    let _ = tokio::try_join!(
        pump(client_read, server_write, state.clone(), generation),
        pump(server_read, client_write, state, generation),
    );
}

/// Copies `from` to `to` while the mode allows; on end of stream, shuts `to` down and returns `Ok`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        gate(&mut state, generation).await?;
        let read = tokio::select! {
            biased;
            changed = state.changed() => {
                changed.map_err(|_| Stop::Close)?;
                continue;
            }
            read = from.read(&mut buf) => read.map_err(|_| Stop::Failed)?,
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Written in steps, each cancellable by a mode change, so a blackhole also stops bytes already read
        // (kept here until the mode allows them through, or dropped with the connection).
        let mut written = 0;
        while written < read {
            gate(&mut state, generation).await?;
            tokio::select! {
                biased;
                changed = state.changed() => changed.map_err(|_| Stop::Close)?,
                n = to.write(&buf[written..read]) => match n {
                    Ok(0) | Err(_) => return Err(Stop::Failed),
                    Ok(n) => written += n,
                },
            }
        }
    }
}
