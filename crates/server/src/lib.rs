//! # `carnet serve`: the vault over HTTPS
//!
//! A session per clinician (their own key slot), keys only while someone is logged in, patients
//! addressed by their reference so that no identifier reaches a URL, and the error model of
//! `docs/api.md`. The contract is `docs/api.md` and the OpenAPI document `openapi.json`
//! (served at `/v1/openapi.json`); the design is ADR 0022.
//!
//! The vault's operations are synchronous (carnet-core); each request runs them on tokio's
//! blocking pool, and logins (one Argon2id of 64 MiB each) on a pool of their own size.
#![forbid(unsafe_code)]

mod api;
mod error;
mod limits;
mod sessions;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use carnet_storage::Store;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use tls::Identity;

/// What the machine remembers of the vault between runs of the server (the command line's
/// state directory, ADR 0013): the newest access-log head seen, so that a vault put back to an
/// older state while the server was stopped is refused at the first login.
pub trait HeadMemory: Send + Sync {
    /// The newest head remembered, if any.
    fn seen(&self) -> Option<carnet_core::Checkpoint>;
    /// Remembers `head` (never a head older than the one remembered).
    fn remember(&self, head: &carnet_core::Checkpoint);
}

/// How the server speaks.
pub enum Transport {
    /// HTTPS with this certificate.
    Tls(Identity),
    /// Plain HTTP (loopback addresses only; [`serve`] refuses others).
    InsecureHttp,
}

/// What `carnet serve` was told.
pub struct Config {
    pub listen: SocketAddr,
    pub transport: Transport,
    /// A session unused this long ends (15 minutes by default).
    pub idle_timeout: Duration,
    /// A session ends this long after login whatever its use (12 hours by default).
    pub absolute_timeout: Duration,
    /// Logins unlocking at once (each Argon2id takes 64 MiB by default).
    pub concurrent_unlocks: usize,
    /// The reverse proxy whose `X-Forwarded-For` names the client (none: the peer is).
    pub trusted_proxy: Option<IpAddr>,
    /// Where the server's own notes go (failed logins): stderr by default.
    pub log_file: Option<PathBuf>,
    /// What this machine remembers of the vault (none: only what this run sees).
    pub memory: Option<Box<dyn HeadMemory>>,
}

impl Config {
    /// The defaults for `listen` and `transport`.
    pub fn new(listen: SocketAddr, transport: Transport) -> Self {
        Config {
            listen,
            transport,
            idle_timeout: Duration::from_secs(15 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            concurrent_unlocks: 2,
            trusted_proxy: None,
            log_file: None,
            memory: None,
        }
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Open connections at most; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A client has this long to finish its TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests have this long to finish after a stop is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the vault in `store` until SIGTERM or SIGINT; `announce` gets the line to print once
/// connections are accepted. Every session's keys are dropped before it returns.
pub fn serve<S: Store + 'static>(
    store: Arc<S>,
    config: Config,
    announce: impl FnOnce(&str),
) -> Result<(), ServeError> {
    if matches!(config.transport, Transport::InsecureHttp) && !config.listen.ip().is_loopback() {
        return Err(ServeError::Usage(format!(
            "--insecure-http is only allowed on a loopback address (127.0.0.1 or ::1), not {}",
            config.listen.ip()
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("carnet-serve")
        .build()?;
    runtime.block_on(run(store, config, announce))
}

async fn run<S: Store + 'static>(
    store: Arc<S>,
    config: Config,
    announce: impl FnOnce(&str),
) -> Result<(), ServeError> {
    let (acceptor, scheme, fingerprint) = match config.transport {
        Transport::Tls(identity) => {
            let fp = identity.fingerprint();
            let cfg = identity.server_config()?;
            (
                Some(tokio_rustls::TlsAcceptor::from(cfg)),
                "https",
                Some(fp),
            )
        }
        Transport::InsecureHttp => (None, "http", None),
    };
    let state = Arc::new(api::State::new(
        store,
        config.idle_timeout,
        config.absolute_timeout,
        config.concurrent_unlocks,
        config.trusted_proxy,
        config.log_file.clone(),
        config.memory,
    )?);
    let app = api::router(Arc::clone(&state));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Listen(config.listen, e))?;
    let bound = listener.local_addr()?;
    let mut line = format!("carnet serve: listening on {scheme}://{bound}");
    if let Some(fp) = fingerprint {
        line.push_str(&format!(" (certificate SHA-256 fingerprint {fp})"));
    }
    let stop = stop_signal()?;
    announce(&line);

    let sweeper = tokio::spawn(api::sweep_sessions(Arc::clone(&state)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = api::service(app.clone(), peer);
        let http = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .to_owned();
        match &acceptor {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
            None => {
                let conn = http.serve_connection(TokioIo::new(tcp), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    // In-flight requests finish (within DRAIN_TIMEOUT); then every key is dropped.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    sweeper.abort();
    state.stop().await;
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C). The handlers are installed here, at once (not when the future
/// is first polled): a signal that comes right after the listening line is a graceful stop,
/// not the default action's kill.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
