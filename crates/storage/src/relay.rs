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
//! The gate bounds a freeze itself ([`FREEZE_LIMIT`]): writers stop waiting at its deadline,
//! whatever the freezing client does.
//!
//! The protocol (version [`PROTOCOL`]) is a sequence of frames, each a 4-byte big-endian length
//! and that many bytes of bincode 2 (standard configuration) of a request or a response; one
//! request, one response, in order, except a large batch, whose parts come in frames of their
//! own before its one response, and a `replace_all`, whose records stream likewise. The host's
//! greeting names its instance: a client never goes on with a server restarted under it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Batch, DocName, EntryIter, Op, Space, SpacedEntry, Store, StoreError, StoreLock};

/// The socket's name in the vault's directory.
/// The socket's name in the vault's directory.
pub const SOCKET_NAME: &str = "serve.sock";
/// The version of the relay's protocol: both ends must speak the same.
pub const PROTOCOL: u32 = 1;
/// The largest frame either end accepts.
const MAX_FRAME: usize = 256 << 20;
/// A page of a scan, or a frame of `replace_all`'s records: this many entries at most...
const PAGE_ENTRIES: usize = 1000;
/// ... or about this many bytes.
const PAGE_BYTES: usize = 4 << 20;
/// A batch's operations travel in frames of about this many bytes (a batch may be larger than
/// a frame: a rotation's batch carries 256 notes, old and new).
const COMMIT_PART_BYTES: usize = 64 << 20;
/// Connections served at once; more are told to try again.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may leave an answer unread before its connection is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backup may hold every write by default ([`RelayHost::with_freeze_limit`]):
/// shorter than a key operation's lease (10 minutes), which a held write cannot renew.
pub const FREEZE_LIMIT: Duration = Duration::from_secs(5 * 60);

/// A record's place and value, as the wire carries them.
type WireEntry = (String, Vec<u8>, Vec<u8>);
/// A precondition: space, key, expected value.
type WireRequire = (String, Vec<u8>, Option<Vec<u8>>);

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
    /// A part of a batch, more to follow (no answer).
    CommitPart {
        require: Vec<WireRequire>,
        ops: Vec<WireOp>,
    },
    /// The batch's last part: the whole batch is committed, atomically.
    Commit {
        require: Vec<WireRequire>,
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
    /// The host's protocol, and which lending this is: a server restarted on the same socket is
    /// another instance, which knows nothing of the first one's locks and freezes.
    Hello {
        protocol: u32,
        instance: u64,
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

// ---------------------------------------------------------------------------------------------
// The host.

/// The gate every write of a [`RelayHost`] passes, which a backup's freeze closes for a while.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Writes under way.
    writers: usize,
    /// The freeze in force: its number and its deadline.
    frozen: Option<(u64, Instant)>,
    last_freeze: u64,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two counters and an option, each change a single assignment: a poisoned
        // lock still holds a valid one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while a freeze is in force (never past its deadline), then counts a writer in.
    fn enter(&self) -> Writing<'_> {
        let mut st = self.lock();
        loop {
            match st.frozen {
                Some((_, until)) if Instant::now() < until => st = self.wait(st, until),
                // A freeze past its deadline is over: writes go on.
                Some(_) => st.frozen = None,
                None => break,
            }
        }
        st.writers += 1;
        Writing(self)
    }

    /// Closes the gate for `limit` at most, once the writes under way are done: the freeze's
    /// number. `Conflict` if another freeze is in force.
    fn freeze(&self, limit: Duration) -> Result<u64, StoreError> {
        let mut st = self.lock();
        if matches!(st.frozen, Some((_, until)) if Instant::now() < until) {
            return Err(StoreError::Conflict);
        }
        st.last_freeze += 1;
        let id = st.last_freeze;
        let until = Instant::now() + limit;
        st.frozen = Some((id, until));
        while st.writers > 0 && Instant::now() < until {
            st = self.wait(st, until);
        }
        Ok(id)
    }

    /// Waits for a change of the gate's state, until `until` at most.
    fn wait<'a>(
        &self,
        st: std::sync::MutexGuard<'a, GateState>,
        until: Instant,
    ) -> std::sync::MutexGuard<'a, GateState> {
        let left = until.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Opens the gate closed by freeze `id`: whether that freeze held from start to end.
    fn thaw(&self, id: u64) -> bool {
        let mut st = self.lock();
        let whole = match st.frozen {
            Some((current, until)) if current == id => {
                st.frozen = None;
                Instant::now() <= until && st.writers == 0
            }
            _ => false,
        };
        self.changed.notify_all();
        whole
    }
}

/// A write under way ([`Gate::enter`]).
struct Writing<'g>(&'g Gate);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.writers -= 1;
        self.0.changed.notify_all();
    }
}

/// The store of the process that holds it open, as both that process and the relay's clients
/// use it: every write passes a gate that a backup ([`RelayStore::freeze`]) can close, for
/// [`FREEZE_LIMIT`] at most. It lends the spaces and documents it is told of, and no other.
pub struct RelayHost<S> {
    inner: S,
    gate: Gate,
    turns: Arc<Turns>,
    flushes: Flushes,
    freeze_limit: Duration,
    spaces: &'static [Space],
    documents: &'static [DocName],
}

impl<S: Store> RelayHost<S> {
    /// `store`, ready to be lent ([`listen`]) with its `spaces` and `documents` (for a vault:
    /// `carnet_core::STORE_SPACES` and `STORE_DOCUMENTS`).
    pub fn new(store: S, spaces: &'static [Space], documents: &'static [DocName]) -> Self {
        RelayHost {
            inner: store,
            gate: Gate::default(),
            turns: Arc::default(),
            flushes: Flushes::default(),
            freeze_limit: FREEZE_LIMIT,
            spaces,
            documents,
        }
    }

    /// The longest a client may hold every write ([`FREEZE_LIMIT`] by default): past it,
    /// writes resume and the client is told its freeze did not hold.
    pub fn with_freeze_limit(mut self, limit: Duration) -> Self {
        self.freeze_limit = limit;
        self
    }

    fn space(&self, name: &str) -> Result<Space, StoreError> {
        self.spaces
            .iter()
            .find(|s| s.name() == name)
            .copied()
            .ok_or_else(|| {
                StoreError::Unsupported(
                    "the relay's client named a space this vault does not have (a newer carnet?)"
                        .into(),
                )
            })
    }

    fn doc(&self, name: &str) -> Result<DocName, StoreError> {
        self.documents
            .iter()
            .find(|d| d.name() == name)
            .copied()
            .ok_or_else(|| {
                StoreError::Unsupported(
                    "the relay's client named a document this vault does not have (a newer carnet?)"
                        .into(),
                )
            })
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
        let _w = self.gate.enter();
        self.inner.commit(batch)?;
        self.flushes.committed();
        Ok(())
    }
    /// Group commit: returns once a flush that began after every commit made before this call
    /// has ended; callers that come while one runs share the next.
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.flush(|| self.inner.flush())
    }
    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_doc(name)
    }
    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let _w = self.gate.enter();
        self.inner.replace_doc(name, bytes)
    }
    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let _w = self.gate.enter();
        self.inner.append_doc(name, bytes)
    }
    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        let _w = self.gate.enter();
        self.inner.replace_all(records)
    }
    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        self.inner.lock_key_operations()
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        self.inner.key_operations_locked()
    }
    /// The backend's own turn if it has one, else the host's: the writers of every `Vault` of
    /// the holding process and of every relay client queue there, first come first served,
    /// instead of losing compare-and-swap races to each other (a client's round trips make its
    /// writes slower, and so the likelier to lose).
    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        match self.inner.writer_turn()? {
            Some(turn) => Ok(Some(turn)),
            None => Ok(Some(Turns::take(&self.turns))),
        }
    }
}

/// The flushes of a [`RelayHost`], shared: one fsync makes durable every commit made before it
/// began, so concurrent callers wait for one instead of each doing their own.
#[derive(Default)]
struct Flushes {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Commits applied, counted as they return.
    committed: u64,
    /// Commits made durable by an ended flush.
    flushed: u64,
    flushing: bool,
}

impl Flushes {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        // Counters and a flag, each change one assignment: a poisoned lock holds valid ones.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self) {
        self.lock().committed += 1;
    }

    fn flush(&self, flush: impl Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut st = self.lock();
        let target = st.committed;
        loop {
            if st.flushed >= target {
                return Ok(());
            }
            if st.flushing {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let upto = st.committed;
            drop(st);
            let result = flush();
            st = self.lock();
            st.flushing = false;
            if result.is_ok() {
                st.flushed = st.flushed.max(upto);
            }
            self.done.notify_all();
            result?;
        }
    }
}

/// Writers' turns in ticket order. A turn is a courtesy, not a lock (every write is a
/// compare-and-swap): one held longer than [`TURN_LEASE`] (a desk command stopped with Ctrl-Z
/// while it held one) is passed over, and the writers behind it go on.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnState {
    /// The next ticket to give.
    next: u64,
    /// The ticket whose turn it is, and since when.
    serving: u64,
    since: Option<Instant>,
}

/// How long a writer's turn may last before the next writer goes ahead anyway.
const TURN_LEASE: Duration = Duration::from_secs(2);

impl Turns {
    fn take(turns: &Arc<Turns>) -> StoreLock {
        // Counters and an instant, each change one assignment: a poisoned lock holds valid ones.
        let mut st = turns.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = st.next;
        st.next += 1;
        loop {
            if st.serving == ticket {
                st.since = Some(Instant::now());
                break;
            }
            let since = *st.since.get_or_insert_with(Instant::now);
            if since.elapsed() >= TURN_LEASE {
                // The turn's holder has held it too long: the next ticket's turn.
                st.serving += 1;
                st.since = Some(Instant::now());
                turns.changed.notify_all();
                continue;
            }
            let left = TURN_LEASE.saturating_sub(since.elapsed());
            st = turns
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        StoreLock::new(Box::new(Turn(Arc::clone(turns), ticket)))
    }
}

/// A writer's turn ([`Turns::take`]): the next ticket's when dropped (unless it was passed over).
struct Turn(Arc<Turns>, u64);

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.serving == self.1 {
            st.serving += 1;
            st.since = Some(Instant::now());
            self.0.changed.notify_all();
        }
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
        let _ = std::fs::remove_file(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the accepting thread looks for a stop when no client connects.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A number for this lending, different at each start (not a secret: it tells a restarted
/// server from the one a client first reached).
fn instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
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
    // Polled, so that a stop needs nothing from the socket's path (which may be gone).
    listener.set_nonblocking(true).map_err(cannot)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let id = instance();
    let thread = std::thread::Builder::new()
        .name("carnet-relay".into())
        .spawn(move || accept(listener, host, stopping, id))
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
    instance: u64,
) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            // A connection that failed before we could take it: the next one may not.
            Err(_) => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err()
            || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        {
            continue;
        }
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
                let _ = serve_connection(&host, stream, instance);
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
    /// The freeze this connection holds: only its thaw may follow.
    frozen: Option<u64>,
    /// The parts of a batch sent so far.
    batch: Batch,
}

fn serve_connection<S: Store>(
    host: &RelayHost<S>,
    mut stream: UnixStream,
    instance: u64,
) -> io::Result<()> {
    let hello = Response::Hello {
        protocol: PROTOCOL,
        instance,
    };
    match read_frame::<Request>(&mut stream)? {
        Some(Request::Hello { protocol }) if protocol == PROTOCOL => {
            write_frame(&mut stream, &hello)?
        }
        // Another version: it is told ours, and the connection ends.
        Some(Request::Hello { .. }) => return write_frame(&mut stream, &hello),
        _ => return Ok(()),
    }
    let mut held = Held {
        scan: None,
        lock: None,
        frozen: None,
        batch: Batch::new(),
    };
    let result = (|| loop {
        let Some(request) = read_frame::<Request>(&mut stream)? else {
            return Ok(());
        };
        let response = match request {
            Request::Thaw => {
                let whole = held.frozen.take().is_some_and(|id| host.gate.thaw(id));
                Response::Thawed { whole }
            }
            // A freezing connection writing would wait for its own freeze: refused.
            _ if held.frozen.is_some() => failed(StoreError::Unsupported(
                "only a thaw may follow a freeze on its connection".into(),
            )),
            Request::ReplaceAll => replace_all(host, &mut stream)?,
            Request::CommitPart { require, ops } => {
                if let Err(e) = add_to(host, &mut held.batch, require, ops) {
                    held.batch = Batch::new();
                    failed(e)
                } else {
                    continue;
                }
            }
            other => answer(host, &mut held, other),
        };
        write_frame(&mut stream, &response)?;
    })();
    // A freezing client that went away (killed, or lost) thaws by going.
    if let Some(id) = held.frozen.take() {
        host.gate.thaw(id);
    }
    result
}

fn failed(e: StoreError) -> Response {
    Response::Failed(WireError::from(&e))
}

fn answer<'h, S: Store>(host: &'h RelayHost<S>, held: &mut Held<'h>, request: Request) -> Response {
    let done = |r: Result<(), StoreError>| r.map_or_else(failed, |()| Response::Done);
    let value = |r: Result<Option<Vec<u8>>, StoreError>| r.map_or_else(failed, Response::Value);
    match request {
        Request::Get { space, key } => value(host.space(&space).and_then(|s| host.get(s, &key))),
        Request::Scan { space, prefix } => match host.space(&space) {
            Ok(s) => {
                held.scan = Some(host.scan_prefix(s, &prefix));
                page(&mut held.scan)
            }
            Err(e) => failed(e),
        },
        Request::ScanMore => page(&mut held.scan),
        Request::Commit { require, ops } => {
            let mut batch = std::mem::take(&mut held.batch);
            done(add_to(host, &mut batch, require, ops).and_then(|()| host.commit(batch)))
        }
        Request::Flush => done(host.flush()),
        Request::ReadDoc { name } => value(host.doc(&name).and_then(|n| host.read_doc(n))),
        Request::ReplaceDoc { name, bytes } => {
            done(host.doc(&name).and_then(|n| host.replace_doc(n, &bytes)))
        }
        Request::AppendDoc { name, bytes } => {
            done(host.doc(&name).and_then(|n| host.append_doc(n, &bytes)))
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
        Request::Freeze => match host.gate.freeze(host.freeze_limit) {
            Ok(id) => {
                held.frozen = Some(id);
                Response::Done
            }
            Err(e) => failed(e),
        },
        Request::Hello { .. }
        | Request::Thaw
        | Request::CommitPart { .. }
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

/// Adds a part's preconditions and operations to `batch`.
fn add_to<S: Store>(
    host: &RelayHost<S>,
    batch: &mut Batch,
    require: Vec<WireRequire>,
    ops: Vec<WireOp>,
) -> Result<(), StoreError> {
    for (s, key, expected) in require {
        batch.require(host.space(&s)?, key, expected);
    }
    for op in ops {
        match op {
            WireOp::Put {
                space: s,
                key,
                value,
            } => batch.put(host.space(&s)?, key, value),
            WireOp::Delete { space: s, key } => batch.delete(host.space(&s)?, key),
        }
    }
    Ok(())
}

/// A `replace_all` whose records stream in from the client; its one response.
fn replace_all<S: Store>(host: &RelayHost<S>, stream: &mut UnixStream) -> io::Result<Response> {
    struct Incoming<'a, S> {
        host: &'a RelayHost<S>,
        stream: &'a mut UnixStream,
        buffer: VecDeque<WireEntry>,
        ended: bool,
        broken: Option<io::Error>,
    }
    impl<S: Store> Iterator for Incoming<'_, S> {
        type Item = Result<SpacedEntry, StoreError>;
        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some((s, k, v)) = self.buffer.pop_front() {
                    return Some(self.host.space(&s).map(|s| (s, k, v)));
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
        host,
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
    /// A connection to the lending at `path`, which must be `instance` when one is given.
    fn open(path: &Path, instance: Option<u64>) -> Result<(Conn, u64), StoreError> {
        Conn::greet(UnixStream::connect(path).map_err(lost)?, instance)
    }

    fn greet(stream: UnixStream, instance: Option<u64>) -> Result<(Conn, u64), StoreError> {
        let mut conn = Conn(stream);
        match conn.call(&Request::Hello { protocol: PROTOCOL })? {
            Response::Hello { protocol, .. } if protocol != PROTOCOL => Err(StoreError::Unsupported(format!(
                "the running carnet serve speaks relay protocol {protocol} and this carnet {PROTOCOL}: use the same version of Carnet for both"
            ))),
            Response::Hello { instance: now, .. } if instance.is_some_and(|first| first != now) => {
                Err(StoreError::Unavailable(
                    "the carnet serve this command was working through restarted: run the command again".into(),
                ))
            }
            Response::Hello { instance: now, .. } => Ok((conn, now)),
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
    pool: Arc<Pool>,
    /// Whether the host's backend has a writer turn: 0 not known yet, 1 none, 2 it has one.
    writer_turns: std::sync::atomic::AtomicU8,
}

/// The connections of a [`RelayStore`] not in use.
struct Pool {
    path: PathBuf,
    /// The lending this store reached first: every later connection must reach the same.
    instance: u64,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn take(&self) -> Result<Conn, StoreError> {
        // A poisoned pool still holds whole connections (push and pop are its only changes).
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => Ok(Conn::open(&self.path, Some(self.instance))?.0),
        }
    }

    fn give(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

impl std::fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStore")
            .field("path", &self.pool.path)
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
        let (first, instance) = Conn::greet(stream, None)?;
        Ok(Some(RelayStore {
            pool: Arc::new(Pool {
                path,
                instance,
                idle: Mutex::new(vec![first]),
            }),
            writer_turns: std::sync::atomic::AtomicU8::new(0),
        }))
    }

    /// The socket this store reaches.
    pub fn path(&self) -> &Path {
        &self.pool.path
    }

    fn take(&self) -> Result<Conn, StoreError> {
        self.pool.take()
    }

    fn open(&self) -> Result<Conn, StoreError> {
        Ok(Conn::open(&self.pool.path, Some(self.pool.instance))?.0)
    }

    fn give(&self, conn: Conn) {
        self.pool.give(conn);
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
        // A pooled connection, which the lock keeps until its release.
        let mut conn = self.take()?;
        match conn.call(&request)? {
            Response::Held(true) => Ok(Some(StoreLock::new(Box::new(HeldConn(
                Some(conn),
                Arc::clone(&self.pool),
            ))))),
            Response::Held(false) => {
                self.give(conn);
                Ok(None)
            }
            _ => Err(unexpected()),
        }
    }

    /// Holds every write to the store, by every process, until [`Frozen::thaw`]: what a backup
    /// needs to read one moment of a vault that a server keeps writing to. Reads of the store go
    /// on; writes wait (for [`FREEZE_LIMIT`] at most, after which the freeze lapses and `thaw`
    /// says so). A vault's reads write their access-log entries, so the server's requests wait
    /// too: keep what runs under a freeze short.
    pub fn freeze(&self) -> Result<Frozen, StoreError> {
        let mut conn = self.open()?;
        match conn.call(&Request::Freeze) {
            Ok(Response::Done) => Ok(Frozen(conn)),
            Ok(_) => Err(unexpected()),
            Err(StoreError::Conflict) => Err(StoreError::Unavailable(
                "another backup is holding the running server's writes: try again when it is done"
                    .into(),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A lock held through the relay: released (and the release confirmed) when dropped, its
/// connection then back in the pool.
struct HeldConn(Option<Conn>, Arc<Pool>);

impl Drop for HeldConn {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            if let Ok(Response::Done) = conn.call(&Request::Release) {
                self.1.give(conn);
            }
        }
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
                "the running carnet serve stopped holding writes before the end (it holds them 5 minutes at most): what was read may not be one moment".into(),
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
                None => match self.store.pool.take() {
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
                            self.store.pool.give(c);
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
        // One frame per part of about COMMIT_PART_BYTES; the host commits the whole at the last.
        let mut parts: Vec<(Vec<WireRequire>, Vec<WireOp>)> = vec![(Vec::new(), Vec::new())];
        let mut bytes = 0;
        let mut room = |parts: &mut Vec<(Vec<WireRequire>, Vec<WireOp>)>, more: usize| {
            if bytes > 0 && bytes + more > COMMIT_PART_BYTES {
                parts.push((Vec::new(), Vec::new()));
                bytes = 0;
            }
            bytes += more;
        };
        for p in batch.preconditions {
            room(
                &mut parts,
                p.key.len() + p.expected.as_ref().map_or(0, Vec::len),
            );
            let last = parts.len() - 1;
            parts[last]
                .0
                .push((p.space.name().to_string(), p.key, p.expected));
        }
        for op in batch.ops {
            let op = match op {
                Op::Put { space, key, value } => {
                    room(&mut parts, key.len() + value.len());
                    WireOp::Put {
                        space: space.name().into(),
                        key,
                        value,
                    }
                }
                Op::Delete { space, key } => {
                    room(&mut parts, key.len());
                    WireOp::Delete {
                        space: space.name().into(),
                        key,
                    }
                }
            };
            let last = parts.len() - 1;
            parts[last].1.push(op);
        }
        let (require, ops) = parts.pop().unwrap_or_default();
        if parts.is_empty() {
            return self.done(&Request::Commit { require, ops });
        }
        // The parts go on one connection, in order.
        let mut conn = self.take()?;
        for (require, ops) in parts {
            conn.send(&Request::CommitPart { require, ops })?;
        }
        let result = conn.call(&Request::Commit { require, ops });
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            self.give(conn);
        }
        match result? {
            Response::Done => Ok(()),
            _ => Err(unexpected()),
        }
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
        let mut conn = self.open()?;
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
        // A backend without a writer turn (sled) never gets one: asked once, then known.
        if self.writer_turns.load(Ordering::Relaxed) == 1 {
            return Ok(None);
        }
        let turn = self.lock(Request::WriterTurn)?;
        self.writer_turns
            .store(if turn.is_some() { 2 } else { 1 }, Ordering::Relaxed);
        Ok(turn)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
    use super::*;
    use crate::MemStore;

    const S: Space = Space::new("s");

    /// A raw connection (past the greeting) to a host whose freezes last `limit` at most.
    fn raw(
        limit: Duration,
    ) -> (
        Arc<RelayHost<MemStore>>,
        UnixStream,
        Listening,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(RelayHost::new(MemStore::new(), &[S], &[]).with_freeze_limit(limit));
        let listening = listen(dir.path(), Arc::clone(&host)).unwrap();
        let mut s = UnixStream::connect(listening.path()).unwrap();
        write_frame(&mut s, &Request::Hello { protocol: PROTOCOL }).unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut s).unwrap(),
            Some(Response::Hello { .. })
        ));
        (host, s, listening, dir)
    }

    fn put(key: &[u8]) -> Request {
        Request::Commit {
            require: vec![],
            ops: vec![WireOp::Put {
                space: "s".into(),
                key: key.to_vec(),
                value: b"v".to_vec(),
            }],
        }
    }

    /// A store whose flush takes 30 ms, recording when each began and ended.
    #[derive(Default)]
    struct SlowFlush {
        inner: MemStore,
        flushes: Mutex<Vec<(Instant, Instant)>>,
    }

    impl Store for SlowFlush {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(space, key)
        }
        fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
            self.inner.scan_prefix(space, prefix)
        }
        fn commit(&self, batch: Batch) -> Result<(), StoreError> {
            self.inner.commit(batch)
        }
        fn flush(&self) -> Result<(), StoreError> {
            let began = Instant::now();
            std::thread::sleep(Duration::from_millis(30));
            self.flushes.lock().unwrap().push((began, Instant::now()));
            Ok(())
        }
        fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.read_doc(name)
        }
        fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
            self.inner.replace_doc(name, bytes)
        }
        fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
            self.inner.append_doc(name, bytes)
        }
        fn replace_all(
            &self,
            records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
        ) -> Result<(), StoreError> {
            self.inner.replace_all(records)
        }
    }

    #[test]
    fn concurrent_flushes_share_fsyncs_and_each_returns_after_one_that_began_after_its_commit() {
        let host = Arc::new(RelayHost::new(SlowFlush::default(), &[S], &[]));
        let threads: Vec<_> = (0..16u8)
            .map(|i| {
                let host = Arc::clone(&host);
                std::thread::spawn(move || {
                    let mut b = Batch::new();
                    b.put(S, vec![i], b"v".to_vec());
                    host.commit(b).unwrap();
                    let committed = Instant::now();
                    host.flush().unwrap();
                    (committed, Instant::now())
                })
            })
            .collect();
        let done: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let flushes = host.inner.flushes.lock().unwrap().clone();
        assert!(
            flushes.len() < 16,
            "{} fsyncs for 16 flushes",
            flushes.len()
        );
        for (committed, returned) in done {
            assert!(
                flushes
                    .iter()
                    .any(|(began, ended)| *began >= committed && *ended <= returned),
                "a flush returned before any fsync that began after its commit"
            );
        }
        // Nothing committed since: no fsync at all.
        let before = host.inner.flushes.lock().unwrap().len();
        host.flush().unwrap();
        assert_eq!(host.inner.flushes.lock().unwrap().len(), before);
    }

    #[test]
    fn a_writers_turn_held_too_long_is_passed_over() {
        let host = RelayHost::new(MemStore::new(), &[S], &[]);
        let stuck = host.writer_turn().unwrap().expect("the host gives turns");
        let started = Instant::now();
        let next = host.writer_turn().unwrap().expect("a turn");
        let waited = started.elapsed();
        assert!(
            waited >= TURN_LEASE / 2 && waited < TURN_LEASE * 3,
            "{waited:?}"
        );
        // The stuck holder's late release does not take the next writer's turn away.
        drop(stuck);
        let third = std::thread::spawn({
            let host = Arc::new(host);
            move || {
                let t = Instant::now();
                drop(host.writer_turn().unwrap());
                t.elapsed()
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(next);
        assert!(third.join().unwrap() < TURN_LEASE * 2);
    }

    #[test]
    fn a_freezing_connection_may_only_thaw_and_its_writes_are_refused_not_deadlocked() {
        let (host, mut s, _l, _d) = raw(FREEZE_LIMIT);
        write_frame(&mut s, &Request::Freeze).unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut s).unwrap(),
            Some(Response::Done)
        ));
        write_frame(&mut s, &put(b"x")).unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut s).unwrap(),
            Some(Response::Failed(WireError::Unsupported(_)))
        ));
        write_frame(&mut s, &Request::Thaw).unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut s).unwrap(),
            Some(Response::Thawed { whole: true })
        ));
        assert_eq!(
            host.get(S, b"x").unwrap(),
            None,
            "the refused write wrote nothing"
        );
    }

    #[test]
    fn a_freeze_ends_at_its_deadline_whatever_its_client_sends() {
        let (host, mut s, _l, _d) = raw(Duration::from_millis(300));
        write_frame(&mut s, &Request::Freeze).unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut s).unwrap(),
            Some(Response::Done)
        ));
        // The client dribbles a frame a byte at a time; the host's write does not wait for it.
        let dribbler = std::thread::spawn(move || {
            for b in [0u8, 0, 0] {
                let _ = s.write_all(&[b]);
                std::thread::sleep(Duration::from_millis(200));
            }
            s
        });
        let started = Instant::now();
        host.commit({
            let mut b = Batch::new();
            b.put(S, b"k".to_vec(), b"v".to_vec());
            b
        })
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(dribbler.join().unwrap());
    }
}
