//! The local relay: a store that one process holds open (sled, which only one process may open
//! at a time) lent to the other processes of the same user through a Unix socket beside it.
//!
//! `carnet serve` holds a sled vault for as long as it runs. The administrator's commands
//! (backup, rotations, user changes, verify, any other) reach the same store through the relay
//! instead of failing with "vault in use": [`RelayStore::connect`] finds the socket in the vault's
//! directory, and the command runs on a [`RelayStore`] exactly as it would on the files. The relay
//! carries what [`Store`] carries, **opaque bytes**: every key, every passphrase and every check
//! stays in the process that asked, and the server learns nothing it could not read on its disk.
//!
//! Who may connect could open the files anyway: the socket lives in the vault's directory (made
//! 0700 by [`crate::SledStore`]), is itself made 0600, and the host answers only a peer of its own
//! user (the kernel's `SO_PEERCRED`).
//!
//! The host side is a [`RelayHost`], the wrapper the holding process uses for its own writes too:
//! its *gate* lets a backup ([`RelayStore::freeze`]) hold every write, of every process, while it
//! reads the store, so that an archive is one moment, as the directory's lock made it before.
//!
//! The protocol (version [`PROTOCOL`]) is a sequence of frames, each a 4-byte big-endian length
//! and that many bytes of bincode 2 (standard configuration) of a request or a response; one
//! request, one response, in order, except a `replace_all`, whose records stream in frames of
//! their own before its one response.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Batch, DocName, EntryIter, Op, Space, SpacedEntry, Store, StoreError, StoreLock};

/// The socket's name in the vault's directory.
pub const SOCKET_NAME: &str = "serve.sock";
/// The version of the relay's protocol: both ends must speak the same.
pub const PROTOCOL: u32 = 1;
/// The largest frame either end accepts (a batch of notes fits many times over).
const MAX_FRAME: usize = 256 << 20;
/// A page of a scan, or a frame of `replace_all`'s records: this many entries at most...
const PAGE_ENTRIES: usize = 1000;
/// ... or about this many bytes.
const PAGE_BYTES: usize = 4 << 20;
/// Connections served at once; more are told to try again.
const MAX_CONNECTIONS: usize = 64;
/// How long a backup may hold every write by default ([`RelayHost::with_freeze_limit`]).
pub const FREEZE_LIMIT: Duration = Duration::from_secs(30 * 60);

/// A record's place and value, as the wire carries them.
type WireEntry = (String, Vec<u8>, Vec<u8>);

#[derive(Serialize, Deserialize)]
enum Request {
    Hello {
        protocol: u32,
    },
    Get {
        space: String,
        key: Vec<u8>,
    },
    Scan {
        space: String,
        prefix: Vec<u8>,
    },
    ScanMore,
    Commit {
        require: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
        ops: Vec<WireOp>,
    },
    Flush,
    ReadDoc {
        name: String,
    },
    ReplaceDoc {
        name: String,
        bytes: Vec<u8>,
    },
    AppendDoc {
        name: String,
        bytes: Vec<u8>,
    },
    ReplaceAll,
    Records(Vec<WireEntry>),
    RecordsEnd,
    RecordsFailed(WireError),
    LockKeyOperations,
    WriterTurn,
    Release,
    KeyOperationsLocked,
    Freeze,
    Thaw,
}

#[derive(Serialize, Deserialize)]
enum WireOp {
    Put {
        space: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: String,
        key: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize)]
enum Response {
    Hello {
        protocol: u32,
    },
    Done,
    Value(Option<Vec<u8>>),
    Page {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        last: bool,
    },
    /// A lock taken (`true`), or the backend has none (`false`).
    Held(bool),
    Flag(Option<bool>),
    /// The end of a freeze: `whole` when it held from start to end.
    Thawed {
        whole: bool,
    },
    Failed(WireError),
}

/// A [`StoreError`] as the wire carries it (messages name files and spaces, never contents).
#[derive(Serialize, Deserialize)]
enum WireError {
    Locked,
    NotFound(String),
    NotEmpty(String),
    Conflict,
    Unavailable(String),
    Denied(String),
    Unsupported(String),
    Corrupt(String),
    Io {
        context: String,
        message: String,
        os: Option<i32>,
    },
}

impl From<&StoreError> for WireError {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Locked => WireError::Locked,
            StoreError::NotFound(m) => WireError::NotFound(m.clone()),
            StoreError::NotEmpty(m) => WireError::NotEmpty(m.clone()),
            StoreError::Conflict => WireError::Conflict,
            StoreError::Unavailable(m) => WireError::Unavailable(m.clone()),
            StoreError::Denied(m) => WireError::Denied(m.clone()),
            StoreError::Unsupported(m) => WireError::Unsupported(m.clone()),
            StoreError::Corrupt(m) => WireError::Corrupt(m.clone()),
            StoreError::Io { context, source } => WireError::Io {
                context: context.clone(),
                message: source.to_string(),
                os: source.raw_os_error(),
            },
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Locked => StoreError::Locked,
            WireError::NotFound(m) => StoreError::NotFound(m),
            WireError::NotEmpty(m) => StoreError::NotEmpty(m),
            WireError::Conflict => StoreError::Conflict,
            WireError::Unavailable(m) => StoreError::Unavailable(m),
            WireError::Denied(m) => StoreError::Denied(m),
            WireError::Unsupported(m) => StoreError::Unsupported(m),
            WireError::Corrupt(m) => StoreError::Corrupt(m),
            WireError::Io {
                context,
                message,
                os,
            } => StoreError::io(
                context,
                match os {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::other(message),
                },
            ),
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut buf, config()).map_err(io::Error::other)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a relay frame over 256 MiB",
        ));
    }
    // In range: checked against MAX_FRAME (256 MiB) just above.
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&buf)?;
    w.flush()
}

/// The next frame, or `None` when the other end closed the connection.
fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a relay frame over 256 MiB",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let (value, used) = bincode::serde::decode_from_slice(&body, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes in a relay frame",
        ));
    }
    Ok(Some(value))
}

/// The `&'static` name a [`Space`] or a [`DocName`] needs, for a name read from the wire:
/// names are few and fixed by the program, so each distinct one is kept once, forever, and a
/// peer that sends more than 64 distinct names is refused (the memory kept stays under 2 KiB).
fn intern(name: &str, lenient: bool) -> Result<&'static str, StoreError> {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    if !crate::batch::valid_name(name, lenient) {
        return Err(StoreError::Unsupported(
            "the relay's client named an invalid space or document".into(),
        ));
    }
    // A poisoned lock still holds a valid list: pushes are its only mutation.
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return Ok(known);
    }
    if names.len() >= 64 {
        return Err(StoreError::Unsupported(
            "the relay's client named too many spaces and documents".into(),
        ));
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(kept);
    Ok(kept)
}

fn space(name: &str) -> Result<Space, StoreError> {
    Ok(Space::new(intern(name, true)?))
}

fn doc(name: &str) -> Result<DocName, StoreError> {
    Ok(DocName::new(intern(name, false)?))
}

// ---------------------------------------------------------------------------------------------
// The host.

/// The store of the process that holds it open, as both that process and the relay's clients
/// use it: every write passes a gate that a backup ([`RelayStore::freeze`]) can close.
pub struct RelayHost<S> {
    inner: S,
    gate: RwLock<()>,
    freeze_limit: Duration,
}

impl<S: Store> RelayHost<S> {
    /// `store`, ready to be lent ([`listen`]).
    pub fn new(store: S) -> Self {
        RelayHost {
            inner: store,
            gate: RwLock::new(()),
            freeze_limit: FREEZE_LIMIT,
        }
    }

    /// The longest a client may hold every write ([`FREEZE_LIMIT`] by default): past it,
    /// writes resume and the client is told its freeze did not hold.
    pub fn with_freeze_limit(mut self, limit: Duration) -> Self {
        self.freeze_limit = limit;
        self
    }

    /// The store itself.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // The gate guards no data: a poisoned one is still a gate.
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn freeze(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S> std::fmt::Debug for RelayHost<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayHost")
    }
}

impl<S: Store> Store for RelayHost<S> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        self.inner.scan_prefix(space, prefix)
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let _open = self.writing();
        self.inner.commit(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_doc(name)
    }
    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let _open = self.writing();
        self.inner.replace_doc(name, bytes)
    }
    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let _open = self.writing();
        self.inner.append_doc(name, bytes)
    }
    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        let _open = self.writing();
        self.inner.replace_all(records)
    }
    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        self.inner.lock_key_operations()
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        self.inner.key_operations_locked()
    }
    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        self.inner.writer_turn()
    }
}

/// A listening relay: stops accepting, and removes its socket, when dropped. (Connections
/// already made run until their clients close them, or the process ends.)
pub struct Listening {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `stop`.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lends `host` through a socket named [`SOCKET_NAME`] in `dir` (the vault's directory, which
/// the caller holds: any socket found there is a dead server's and is replaced).
pub fn listen<S: Store + 'static>(
    dir: &Path,
    host: Arc<RelayHost<S>>,
) -> Result<Listening, StoreError> {
    let path = dir.join(SOCKET_NAME);
    let cannot = |e: io::Error| {
        StoreError::io(
            format!("cannot open the local channel {}", path.display()),
            e,
        )
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path).map_err(cannot)?,
        Ok(_) => {
            return Err(StoreError::Corrupt(format!(
                "{} is not a socket: remove it by hand",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(e)),
    }
    let listener = UnixListener::bind(&path).map_err(cannot)?;
    // The directory is its owner's only already; the socket is too, whatever the umask was.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(cannot)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("carnet-relay".into())
        .spawn(move || accept(listener, host, stopping))
        .map_err(cannot)?;
    Ok(Listening {
        path,
        stop,
        thread: Some(thread),
    })
}

fn accept<S: Store + 'static>(
    listener: UnixListener,
    host: Arc<RelayHost<S>>,
    stop: Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else {
            // A connection that failed before we could take it: the next one may not.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if let Some(refusal) = refuse(&stream, &open) {
            let _ = write_frame(&mut stream, &Response::Failed(WireError::from(&refusal)));
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let host = Arc::clone(&host);
        let count = Arc::clone(&open);
        let spawned = std::thread::Builder::new()
            .name("carnet-relay-conn".into())
            .spawn(move || {
                let _ = serve_connection(&host, stream);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure (and its count) never ran.
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why a new connection is refused, if it is: another user's process, or too many at once.
fn refuse(stream: &UnixStream, open: &AtomicUsize) -> Option<StoreError> {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(cred) if cred.uid == rustix::process::geteuid() => {}
        _ => {
            return Some(StoreError::Denied(
                "this vault's server answers only its own user's processes".into(),
            ))
        }
    }
    (open.load(Ordering::SeqCst) >= MAX_CONNECTIONS).then(|| {
        StoreError::Unavailable(
            "the running carnet serve has too many local connections: try again".into(),
        )
    })
}

/// What a connection holds between its requests.
struct Held<'h> {
    scan: Option<EntryIter<'h>>,
    lock: Option<StoreLock>,
    frozen: Option<(RwLockWriteGuard<'h, ()>, Instant)>,
    freeze_lapsed: bool,
}

fn serve_connection<S: Store>(host: &RelayHost<S>, mut stream: UnixStream) -> io::Result<()> {
    match read_frame::<Request>(&mut stream)? {
        Some(Request::Hello { protocol }) if protocol == PROTOCOL => {
            write_frame(&mut stream, &Response::Hello { protocol: PROTOCOL })?
        }
        Some(Request::Hello { .. }) => {
            return write_frame(&mut stream, &Response::Hello { protocol: PROTOCOL })
        }
        _ => return Ok(()),
    }
    let mut held = Held {
        scan: None,
        lock: None,
        frozen: None,
        freeze_lapsed: false,
    };
    loop {
        let limit = held
            .frozen
            .as_ref()
            .map(|(_, since)| host.freeze_limit.saturating_sub(since.elapsed()));
        stream.set_read_timeout(limit.map(|l| l.max(Duration::from_millis(1))))?;
        let request = match read_frame::<Request>(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e)
                if held.frozen.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                // The backup took too long: writes resume, and it will be told at its thaw.
                held.frozen = None;
                held.freeze_lapsed = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        let response = match request {
            Request::ReplaceAll => replace_all(host, &mut stream)?,
            other => answer(host, &mut held, other),
        };
        write_frame(&mut stream, &response)?;
    }
}

fn failed(e: StoreError) -> Response {
    Response::Failed(WireError::from(&e))
}

fn answer<'h, S: Store>(host: &'h RelayHost<S>, held: &mut Held<'h>, request: Request) -> Response {
    let done = |r: Result<(), StoreError>| r.map_or_else(failed, |()| Response::Done);
    let value = |r: Result<Option<Vec<u8>>, StoreError>| r.map_or_else(failed, Response::Value);
    match request {
        Request::Get { space: s, key } => value(space(&s).and_then(|s| host.get(s, &key))),
        Request::Scan { space: s, prefix } => match space(&s) {
            Ok(s) => {
                held.scan = Some(host.scan_prefix(s, &prefix));
                page(&mut held.scan)
            }
            Err(e) => failed(e),
        },
        Request::ScanMore => page(&mut held.scan),
        Request::Commit { require, ops } => done(batch(require, ops).and_then(|b| host.commit(b))),
        Request::Flush => done(host.flush()),
        Request::ReadDoc { name } => value(doc(&name).and_then(|n| host.read_doc(n))),
        Request::ReplaceDoc { name, bytes } => {
            done(doc(&name).and_then(|n| host.replace_doc(n, &bytes)))
        }
        Request::AppendDoc { name, bytes } => {
            done(doc(&name).and_then(|n| host.append_doc(n, &bytes)))
        }
        Request::LockKeyOperations | Request::WriterTurn if held.lock.is_some() => failed(
            StoreError::Unsupported("one lock per relay connection".into()),
        ),
        Request::LockKeyOperations => take(&mut held.lock, host.lock_key_operations()),
        Request::WriterTurn => take(&mut held.lock, host.writer_turn()),
        Request::Release => {
            held.lock = None;
            Response::Done
        }
        Request::KeyOperationsLocked => host
            .key_operations_locked()
            .map_or_else(failed, Response::Flag),
        Request::Freeze => {
            if held.frozen.is_none() {
                held.frozen = Some((host.freeze(), Instant::now()));
                held.freeze_lapsed = false;
            }
            Response::Done
        }
        Request::Thaw => {
            let whole = held.frozen.take().is_some() && !held.freeze_lapsed;
            held.freeze_lapsed = false;
            Response::Thawed { whole }
        }
        Request::Hello { .. }
        | Request::ReplaceAll
        | Request::Records(_)
        | Request::RecordsEnd
        | Request::RecordsFailed(_) => failed(StoreError::Unsupported(
            "a relay request out of order".into(),
        )),
    }
}

fn take(slot: &mut Option<StoreLock>, taken: Result<Option<StoreLock>, StoreError>) -> Response {
    match taken {
        Ok(Some(lock)) => {
            *slot = Some(lock);
            Response::Held(true)
        }
        Ok(None) => Response::Held(false),
        Err(e) => failed(e),
    }
}

/// The next page of the connection's scan (the last one ends it).
fn page(scan: &mut Option<EntryIter<'_>>) -> Response {
    let Some(iter) = scan.as_mut() else {
        return failed(StoreError::Unsupported("no scan to continue".into()));
    };
    let mut entries = Vec::new();
    let mut bytes = 0;
    while entries.len() < PAGE_ENTRIES && bytes < PAGE_BYTES {
        match iter.next() {
            Some(Ok((k, v))) => {
                bytes += k.len() + v.len();
                entries.push((k, v));
            }
            Some(Err(e)) => {
                *scan = None;
                return failed(e);
            }
            None => {
                *scan = None;
                return Response::Page {
                    entries,
                    last: true,
                };
            }
        }
    }
    Response::Page {
        entries,
        last: false,
    }
}

fn batch(
    require: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    ops: Vec<WireOp>,
) -> Result<Batch, StoreError> {
    let mut b = Batch::new();
    for (s, key, expected) in require {
        b.require(space(&s)?, key, expected);
    }
    for op in ops {
        match op {
            WireOp::Put {
                space: s,
                key,
                value,
            } => b.put(space(&s)?, key, value),
            WireOp::Delete { space: s, key } => b.delete(space(&s)?, key),
        }
    }
    Ok(b)
}

/// A `replace_all` whose records stream in from the client; its one response.
fn replace_all<S: Store>(host: &RelayHost<S>, stream: &mut UnixStream) -> io::Result<Response> {
    struct Incoming<'a> {
        stream: &'a mut UnixStream,
        buffer: VecDeque<WireEntry>,
        ended: bool,
        broken: Option<io::Error>,
    }
    impl Iterator for Incoming<'_> {
        type Item = Result<SpacedEntry, StoreError>;
        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some((s, k, v)) = self.buffer.pop_front() {
                    return Some(space(&s).map(|s| (s, k, v)));
                }
                if self.ended {
                    return None;
                }
                self.ended = true;
                match read_frame::<Request>(self.stream) {
                    Ok(Some(Request::Records(r))) => {
                        self.ended = false;
                        self.buffer.extend(r);
                    }
                    Ok(Some(Request::RecordsEnd)) => return None,
                    Ok(Some(Request::RecordsFailed(e))) => return Some(Err(e.into())),
                    Ok(_) => {
                        return Some(Err(StoreError::Unavailable(
                            "the relay's client left during a replacement".into(),
                        )))
                    }
                    Err(e) => {
                        let err = StoreError::io(
                            "the relay's client",
                            io::Error::new(e.kind(), e.to_string()),
                        );
                        self.broken = Some(e);
                        return Some(Err(err));
                    }
                }
            }
        }
    }
    let mut incoming = Incoming {
        stream,
        buffer: VecDeque::new(),
        ended: false,
        broken: None,
    };
    let result = host.replace_all(&mut incoming);
    if let Some(e) = incoming.broken {
        return Err(e);
    }
    // Whatever the store did not read of the records is read (and dropped) before answering.
    while !incoming.ended {
        match read_frame::<Request>(incoming.stream)? {
            Some(Request::Records(_)) => {}
            Some(_) => incoming.ended = true,
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    Ok(result.map_or_else(failed, |()| Response::Done))
}

// ---------------------------------------------------------------------------------------------
// The client.

struct Conn(UnixStream);

impl Conn {
    fn open(path: &Path) -> Result<Conn, StoreError> {
        Conn::greet(UnixStream::connect(path).map_err(lost)?)
    }

    fn greet(stream: UnixStream) -> Result<Conn, StoreError> {
        let mut conn = Conn(stream);
        match conn.call(&Request::Hello { protocol: PROTOCOL })? {
            Response::Hello { protocol } if protocol == PROTOCOL => Ok(conn),
            Response::Hello { protocol } => Err(StoreError::Unsupported(format!(
                "the running carnet serve speaks relay protocol {protocol} and this carnet {PROTOCOL}: use the same version of Carnet for both"
            ))),
            _ => Err(unexpected()),
        }
    }

    fn call(&mut self, request: &Request) -> Result<Response, StoreError> {
        self.send(request)?;
        self.receive()
    }

    fn send(&mut self, request: &Request) -> Result<(), StoreError> {
        write_frame(&mut self.0, request).map_err(lost)
    }

    fn receive(&mut self) -> Result<Response, StoreError> {
        match read_frame::<Response>(&mut self.0).map_err(lost)? {
            Some(Response::Failed(e)) => Err(e.into()),
            Some(r) => Ok(r),
            None => Err(lost(io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

fn lost(e: io::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "the connection to the running carnet serve was lost ({e}); if it stopped, run the command again"
    ))
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("the running carnet serve answered out of turn".into())
}

/// A store reached through a running server's relay (see the module's documentation). It keeps
/// a few connections open, one per thread using it at a time.
pub struct RelayStore {
    path: PathBuf,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RelayStore {
    /// The store lent by the server running on the vault in `dir`, if one answers there
    /// (`Ok(None)`: no socket, or a dead server's).
    pub fn connect(dir: &Path) -> Result<Option<RelayStore>, StoreError> {
        let path = dir.join(SOCKET_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {}
            _ => return Ok(None),
        }
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(lost(e)),
        };
        let first = Conn::greet(stream)?;
        Ok(Some(RelayStore {
            path,
            idle: Mutex::new(vec![first]),
        }))
    }

    /// The socket this store reaches.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take(&self) -> Result<Conn, StoreError> {
        // A poisoned pool still holds whole connections (push and pop are its only changes).
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => Conn::open(&self.path),
        }
    }

    fn give(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// One request on a pooled connection (returned to the pool unless it broke).
    fn call(&self, request: &Request) -> Result<Response, StoreError> {
        let mut conn = self.take()?;
        let result = conn.call(request);
        // A connection that broke is dropped; one that carried an answer (even a refusal)
        // serves again.
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            self.give(conn);
        }
        result
    }

    fn done(&self, request: &Request) -> Result<(), StoreError> {
        match self.call(request)? {
            Response::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    fn value(&self, request: &Request) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(request)? {
            Response::Value(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    fn lock(&self, request: Request) -> Result<Option<StoreLock>, StoreError> {
        let mut conn = Conn::open(&self.path)?;
        match conn.call(&request)? {
            Response::Held(true) => Ok(Some(StoreLock::new(Box::new(HeldConn(conn))))),
            Response::Held(false) => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// Holds every write to the store, by every process, until [`Frozen::thaw`]: what a backup
    /// needs to read one moment of a vault that a server keeps writing to. Reads go on; writes
    /// wait (for [`FREEZE_LIMIT`] at most, after which the freeze lapses and `thaw` says so).
    pub fn freeze(&self) -> Result<Frozen, StoreError> {
        let mut conn = Conn::open(&self.path)?;
        match conn.call(&Request::Freeze)? {
            Response::Done => Ok(Frozen(conn)),
            _ => Err(unexpected()),
        }
    }
}

/// A lock held through the relay: released (and the release confirmed) when dropped.
struct HeldConn(Conn);

impl Drop for HeldConn {
    fn drop(&mut self) {
        let _ = self.0.call(&Request::Release);
    }
}

/// Every write held ([`RelayStore::freeze`]).
pub struct Frozen(Conn);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Frozen")
    }
}

impl Frozen {
    /// Lets writes go on. An error if the freeze did not hold from start to end (it lapsed, or
    /// the server stopped): what was read under it may not be one moment.
    pub fn thaw(mut self) -> Result<(), StoreError> {
        match self.0.call(&Request::Thaw)? {
            Response::Thawed { whole: true } => Ok(()),
            Response::Thawed { whole: false } => Err(StoreError::Unavailable(
                "the running carnet serve stopped holding writes before the end (it holds them 30 minutes at most): what was read may not be one moment".into(),
            )),
            _ => Err(unexpected()),
        }
    }
}

/// A scan through the relay: pages fetched as they are read, on a connection of its own
/// (returned to the pool at the last page, closed if the scan is dropped before).
struct Scan<'a> {
    store: &'a RelayStore,
    first: Option<Request>,
    conn: Option<Conn>,
    buffer: VecDeque<(Vec<u8>, Vec<u8>)>,
    last: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            if self.last {
                return None;
            }
            let request = self.first.take().unwrap_or(Request::ScanMore);
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => match self.store.take() {
                    Ok(c) => self.conn.insert(c),
                    Err(e) => {
                        self.last = true;
                        return Some(Err(e));
                    }
                },
            };
            match conn.call(&request) {
                Ok(Response::Page { entries, last }) => {
                    self.buffer.extend(entries);
                    if last {
                        self.last = true;
                        if let Some(c) = self.conn.take() {
                            self.store.give(c);
                        }
                    }
                }
                Ok(_) => {
                    self.last = true;
                    self.conn = None;
                    return Some(Err(unexpected()));
                }
                Err(e) => {
                    self.last = true;
                    self.conn = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Store for RelayStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.value(&Request::Get {
            space: space.name().into(),
            key: key.to_vec(),
        })
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        Box::new(Scan {
            store: self,
            first: Some(Request::Scan {
                space: space.name().into(),
                prefix: prefix.to_vec(),
            }),
            conn: None,
            buffer: VecDeque::new(),
            last: false,
        })
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let require = batch
            .preconditions
            .into_iter()
            .map(|p| (p.space.name().to_string(), p.key, p.expected))
            .collect();
        let ops = batch
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { space, key, value } => WireOp::Put {
                    space: space.name().into(),
                    key,
                    value,
                },
                Op::Delete { space, key } => WireOp::Delete {
                    space: space.name().into(),
                    key,
                },
            })
            .collect();
        self.done(&Request::Commit { require, ops })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.done(&Request::Flush)
    }

    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.value(&Request::ReadDoc {
            name: name.name().into(),
        })
    }

    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.done(&Request::ReplaceDoc {
            name: name.name().into(),
            bytes: bytes.to_vec(),
        })
    }

    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.done(&Request::AppendDoc {
            name: name.name().into(),
            bytes: bytes.to_vec(),
        })
    }

    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        // A connection of its own, kept busy by the stream: the records' iterator may read
        // this store meanwhile, on other connections.
        let mut conn = Conn::open(&self.path)?;
        conn.send(&Request::ReplaceAll)?;
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let mut source_failed = None;
        for record in records {
            match record {
                Ok((space, key, value)) => {
                    bytes += key.len() + value.len();
                    chunk.push((space.name().to_string(), key, value));
                    if chunk.len() >= PAGE_ENTRIES || bytes >= PAGE_BYTES {
                        conn.send(&Request::Records(std::mem::take(&mut chunk)))?;
                        bytes = 0;
                    }
                }
                Err(e) => {
                    source_failed = Some(e);
                    break;
                }
            }
        }
        match source_failed {
            Some(e) => {
                conn.send(&Request::RecordsFailed(WireError::from(&e)))?;
                // The store is left as it was; the source's own error is the one to report.
                let _ = conn.receive();
                Err(e)
            }
            None => {
                if !chunk.is_empty() {
                    conn.send(&Request::Records(chunk))?;
                }
                conn.send(&Request::RecordsEnd)?;
                match conn.receive()? {
                    Response::Done => Ok(()),
                    _ => Err(unexpected()),
                }
            }
        }
    }

    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        self.lock(Request::LockKeyOperations)
    }

    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        match self.call(&Request::KeyOperationsLocked)? {
            Response::Flag(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        self.lock(Request::WriterTurn)
    }
}
