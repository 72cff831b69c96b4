//! The embedded default backend: sled 0.34.7, plus a root file beside it.
//!
//! Directory layout (see docs/format.md, "Vault directory"):
//!
//! ```text
//! DIR/carnet.lock   held with an exclusive OS lock while a process has the vault open
//! DIR/NAME          each document, replaced by write to NAME.tmp, fsync, rename, fsync(DIR),
//!                   or appended to with write + fsync
//! DIR/store/        sled's files; every space lives in sled's default tree
//! ```
//!
//! Everything is private to its owner whatever the process umask: the directories are made
//! 0700 and the files Carnet writes 0600, and opening a store makes an older one private too
//! (its directories 0700, its files 0600). Temporary files are created exclusively (never
//! through a link planted in their place), and no file is opened through a symbolic link.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Batch, DocName, DocReader, EntryIter, Op, Space, SpacedEntry, Store, StoreError};

const LOCK_FILE: &str = "carnet.lock";
/// How long an open tries for the lock before it waits (and says so) or gives up: a lock can
/// look taken for a moment after its holder released it (see `open_inner`).
const LOCK_GRACE: Duration = Duration::from_secs(1);
const STORE_DIR: &str = "store";
/// A replacement store being built by `replace_all`.
const STORE_NEW: &str = "store.new";
/// The replaced store, deleted once the replacement is in place.
const STORE_OLD: &str = "store.old";
/// sled's page cache: bounded, so memory does not grow with the vault.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Directories are their owner's only.
const DIR_MODE: u32 = 0o700;
/// Files are their owner's only.
const FILE_MODE: u32 = 0o600;

/// `opts` creating files readable by their owner only, and never opening a symbolic link.
fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW)
}

/// Creates `dir` (and its parents) private to its owner, or makes an existing one so.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| StoreError::io(format!("cannot restrict {}", dir.display()), e))
}

/// Makes the store in `dir` private to its owner, as a store made before Carnet did so may not
/// be: the directories 0700, every file 0600, each changed through its own descriptor (never
/// through a link). A link in the vault directory is left alone (documents are never opened
/// through one); a link in sled's files is refused ([`refuse_links`]).
fn make_private(dir: &Path) -> Result<(), StoreError> {
    restrict_vault_dir(dir)?;
    for name in list(dir)? {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
        if meta.is_dir() {
            refuse_links(&path)?;
            make_tree_private(&path)?;
        } else if meta.is_file() && meta.permissions().mode() & 0o777 != FILE_MODE {
            restrict(&path, FILE_MODE)?;
        }
    }
    Ok(())
}

/// [`make_private`] for a directory of sled's (which [`refuse_links`] checked).
fn make_tree_private(dir: &Path) -> Result<(), StoreError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        restrict(&d, DIR_MODE)?;
        for name in list(&d)? {
            let path = d.join(name);
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
            if meta.is_dir() {
                todo.push(path);
            } else if meta.permissions().mode() & 0o777 != FILE_MODE {
                restrict(&path, FILE_MODE)?;
            }
        }
    }
    Ok(())
}

/// Refuses a directory of sled's files (`store/`, `store.new/`) that is, or holds, anything but
/// plain directories and regular files: sled opens its files by name, so a link planted among
/// them would be followed (a file created or changed anywhere the user, or root, can write).
fn refuse_links(dir: &Path) -> Result<(), StoreError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let meta = match fs::symlink_metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(format!("cannot read {}", d.display()), e)),
        };
        if !meta.is_dir() {
            return Err(not_plain(&d));
        }
        for name in list(&d)? {
            let path = d.join(name);
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
            if meta.is_dir() {
                todo.push(path);
            } else if !meta.is_file() {
                return Err(not_plain(&path));
            }
        }
    }
    Ok(())
}

fn not_plain(path: &Path) -> StoreError {
    StoreError::Corrupt(format!(
        "{} is a link or a special file where the storage engine keeps its own files",
        path.display()
    ))
}

/// Opens `path` without following a link (a link is refused: ELOOP).
fn open_no_follow(path: &Path, dir: bool) -> std::io::Result<File> {
    let flags = libc::O_NOFOLLOW | if dir { libc::O_DIRECTORY } else { 0 };
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// Makes the vault directory itself 0700: the path the user chose, which may be a link of
/// theirs (followed).
fn restrict_vault_dir(dir: &Path) -> Result<(), StoreError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| StoreError::io(format!("cannot restrict {}", dir.display()), e))
}

/// Sets `path`'s mode through a descriptor opened without following links.
fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    let fail = |e| {
        StoreError::io(
            format!("cannot make {} private to its owner", path.display()),
            e,
        )
    };
    let is_dir = fs::symlink_metadata(path).map_err(fail)?.is_dir();
    let f = open_no_follow(path, is_dir).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            not_plain(path)
        } else {
            fail(e)
        }
    })?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(fail)
}

/// A [`Store`] on disk, backed by sled.
///
/// Only one process at a time may open a directory: a second [`SledStore::open`] fails with
/// [`StoreError::Locked`]. Writes are atomic per batch and durable after [`Store::flush`], which
/// flushes sled and then fsyncs its files (sled itself only issues `sync_file_range`, which
/// neither persists file metadata nor writes its large-value blob files through).
pub struct SledStore {
    dir: PathBuf,
    /// The open database; replaced whole by `replace_all`.
    db: std::sync::RwLock<sled::Db>,
    /// Serializes precondition checks with the batch they guard.
    write_lock: Mutex<()>,
    /// Blob files already fsynced (sled never rewrites a blob file in place).
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
    /// The entries of the store directory as of its last fsync.
    synced_names: Mutex<HashSet<std::ffi::OsString>>,
    /// Held for the store's lifetime: the OS releases it when the process ends, even on `kill -9`.
    _lock: File,
    /// One process opens the store: the key-operation lock lives in it.
    key_ops: crate::LocalKeyOpLock,
}

/// The documents of a [`SledStore`]'s directory, read-only, without the store: see
/// [`SledStore::documents`].
#[derive(Debug)]
pub struct SledDocuments {
    dir: PathBuf,
}

impl DocReader for SledDocuments {
    fn document(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        read_doc_in(&self.dir, name)
    }
}

/// The document `name` of the store in `dir`, if it exists: a regular file, never read
/// through a link (a link planted there could pull any file of the user's into a backup).
fn read_doc_in(dir: &Path, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
    use std::io::Read;
    let path = dir.join(name.name());
    let mut f = match open_no_follow(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_plain(&path)),
        Err(e) => return Err(StoreError::io(format!("cannot read {}", path.display()), e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(not_plain(&path));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes)
        .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
    Ok(Some(bytes))
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Creates a new store in `dir`, which must be absent or empty.
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        if dir.exists() {
            let mut entries = fs::read_dir(dir)
                .map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
            if entries.next().is_some() {
                return Err(StoreError::NotEmpty(dir.display().to_string()));
            }
        }
        create_private_dir(dir)?;
        let store = Self::open_inner(dir, Duration::ZERO, &mut || {})?;
        sync_dir(dir)?;
        Ok(store)
    }

    /// Opens the store in `dir`, which must have been made by [`SledStore::create`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, Duration::ZERO, &mut || {})
    }

    /// [`SledStore::open`], waiting up to `wait` for another process to release the vault
    /// (beyond the second every open allows): `waiting` is called once, when the wait begins,
    /// so that the caller can say what it waits for. [`StoreError::Locked`] after that.
    pub fn open_waiting(
        dir: &Path,
        wait: Duration,
        waiting: &mut dyn FnMut(),
    ) -> Result<Self, StoreError> {
        if !dir.join(STORE_DIR).is_dir() && !dir.join(STORE_NEW).is_dir() {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        Self::open_inner(dir, wait, waiting)
    }

    /// Whether `dir` looks like a store made by [`SledStore::create`] (without opening it).
    pub fn exists(dir: &Path) -> bool {
        dir.join(STORE_DIR).is_dir() || dir.join(STORE_NEW).is_dir()
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, sled::Db> {
        // The lock guards a handle swap only; a poisoned lock still holds a usable handle.
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `dir` holds the document `name`, checked without opening (and so without
    /// writing) anything.
    pub fn has_doc(dir: &Path, name: DocName) -> bool {
        fs::symlink_metadata(dir.join(name.name())).is_ok_and(|m| m.is_file())
    }

    /// The documents of the store in `dir`, read without opening sled or taking the lock (and
    /// so without writing anything).
    pub fn documents(dir: &Path) -> SledDocuments {
        SledDocuments {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_inner(
        dir: &Path,
        wait: Duration,
        waiting: &mut dyn FnMut(),
    ) -> Result<Self, StoreError> {
        let lock_path = dir.join(LOCK_FILE);
        let lock = private(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .open(&lock_path)
        .map_err(|e| {
            StoreError::io(
                format!(
                    "cannot open {} (is the vault directory writable?)",
                    lock_path.display()
                ),
                e,
            )
        })?;
        // A lock can also look taken for a moment when a process that just released it had
        // forked (a child inherits the lock until it execs): try for up to a second before
        // calling the vault in use, or before saying that we wait for it.
        let started = Instant::now();
        let mut told = false;
        let locked = loop {
            match lock.try_lock() {
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_GRACE + wait => {
                    if !told && started.elapsed() >= LOCK_GRACE {
                        told = true;
                        waiting();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(
                    format!("cannot lock {}", lock_path.display()),
                    e,
                ))
            }
        }
        restrict_vault_dir(dir)?;
        recover_replacement(dir)?;
        refuse_links(&dir.join(STORE_DIR))?;
        let db = open_sled(&dir.join(STORE_DIR))?;
        // After sled's open, which writes a snapshot with the process's umask.
        make_private(dir)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            db: std::sync::RwLock::new(db),
            write_lock: Mutex::new(()),
            synced_blobs: Mutex::new(HashSet::new()),
            synced_names: Mutex::new(HashSet::new()),
            _lock: lock,
            key_ops: crate::LocalKeyOpLock::default(),
        })
    }

    fn fsync_files(&self) -> Result<(), StoreError> {
        fsync_store_files(
            &self.dir.join(STORE_DIR),
            &self.synced_blobs,
            &self.synced_names,
        )
    }
}

/// Finishes or undoes a `replace_all` that a crash interrupted (see its comments).
fn recover_replacement(dir: &Path) -> Result<(), StoreError> {
    let (store, new, old) = (
        dir.join(STORE_DIR),
        dir.join(STORE_NEW),
        dir.join(STORE_OLD),
    );
    let rm = |p: &Path| {
        fs::remove_dir_all(p)
            .map_err(|e| StoreError::io(format!("cannot remove {}", p.display()), e))
    };
    if !store.exists() && new.is_dir() {
        // The new store was complete (it is renamed only after its flush): put it in place.
        fs::rename(&new, &store)
            .map_err(|e| StoreError::io(format!("cannot rename {}", new.display()), e))?;
        sync_dir(dir)?;
    }
    if new.exists() {
        // A replacement interrupted while it was being built: the old store is still current.
        rm(&new)?;
        sync_dir(dir)?;
    }
    if old.exists() {
        // The replacement is in place; the old records must not survive.
        rm(&old)?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes what sled flushed durable: fsync of `db` (sled itself only calls
/// `sync_file_range`), of every blob file not synced before, and of a directory only when its
/// entries changed since it was last synced (a new blob, a new sled file): one fsync per flush
/// in the common case instead of three.
fn fsync_store_files(
    store: &Path,
    synced_blobs: &Mutex<HashSet<std::ffi::OsString>>,
    synced_names: &Mutex<HashSet<std::ffi::OsString>>,
) -> Result<(), StoreError> {
    fsync_file(&store.join("db"))?;
    let blobs = store.join("blobs");
    let blobs_dir = match fs::symlink_metadata(&blobs) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => return Err(not_plain(&blobs)),
        Err(_) => false,
    };
    if blobs_dir {
        // Poisoning cannot leave the set inconsistent: at worst a blob is fsynced twice.
        let mut synced = synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = Vec::new();
        for entry in list(&blobs)? {
            if !synced.contains(&entry) {
                // sled creates blob files with the process's umask.
                restrict(&blobs.join(&entry), FILE_MODE)?;
                fsync_file(&blobs.join(&entry))?;
                new.push(entry);
            }
        }
        if !new.is_empty() {
            sync_dir(&blobs)?;
            synced.extend(new);
        }
    }
    let names: HashSet<std::ffi::OsString> = list(store)?.into_iter().collect();
    // Poisoning cannot leave the set inconsistent: at worst the directory is fsynced again.
    let mut synced = synced_names.lock().unwrap_or_else(|p| p.into_inner());
    if !names.is_subset(&synced) {
        sync_dir(store)?;
        *synced = names;
    }
    Ok(())
}

/// The names of a directory's entries.
fn list(dir: &Path) -> Result<Vec<std::ffi::OsString>, StoreError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))
}

/// Opens sled. We hold the vault's lock, so a failure of sled's own file lock can only come
/// from a `SledStore` of this process that was just dropped: sled's background flusher
/// releases the file a moment after the drop (up to its flush interval, longer under load).
/// Wait for it: up to 10 s.
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    remove_unfinished_snapshots(path)?;
    let mut attempts = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if attempts < 500 && e.to_string().contains("could not acquire lock") =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(map_sled),
        }
    }
}

/// Removes the snapshot files a killed sled had not finished writing.
///
/// sled 0.34.7 writes a snapshot only while it opens: to `snap.LSN.generating` in three writes
/// (data, length, checksum), then fsync, then a rename to `snap.LSN`, which is the commit; older
/// snapshots are removed only after that rename. But when it looks for the snapshot to start
/// from, it also considers `.generating` files and takes the highest name, so a process killed
/// between those writes leaves a torn file that every later open reports as corruption (sled
/// issue #1527; it also reopens such a file without truncating it). An unfinished file holds
/// nothing the log and the previous snapshot do not: removing it puts the store back as it was
/// before that open began. We hold the vault's lock, so no other process is writing one.
fn remove_unfinished_snapshots(store: &Path) -> Result<(), StoreError> {
    if !store.is_dir() {
        return Ok(());
    }
    let mut removed = false;
    for name in list(store)? {
        let unfinished = name
            .to_str()
            .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"));
        if unfinished {
            let path = store.join(&name);
            fs::remove_file(&path)
                .map_err(|e| StoreError::io(format!("cannot remove {}", path.display()), e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(store)?;
    }
    Ok(())
}

fn fsync_file(path: &Path) -> Result<(), StoreError> {
    match open_no_follow(path, false) {
        Ok(f) => f
            .sync_all()
            .map_err(|e| StoreError::io(format!("cannot fsync {}", path.display()), e)),
        // A blob sled removed since it was listed needs no fsync.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("cannot open {}", path.display()), e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("cannot fsync directory {}", dir.display()), e))
}

fn map_sled(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::io("sled", io),
        sled::Error::Corruption { .. } => StoreError::Corrupt("sled reported corruption".into()),
        other => StoreError::Corrupt(format!("sled: {other}")),
    }
}

/// The sled key of `key` in `space`: `len(name) as u8 || name || key`.
fn full_key(space: Space, key: &[u8]) -> Vec<u8> {
    let name = space.name().as_bytes();
    let mut k = Vec::with_capacity(1 + name.len() + key.len());
    // Space names are at most 32 bytes (checked in `Space::new`), so the length fits in a byte.
    k.push(name.len() as u8);
    k.extend_from_slice(name);
    k.extend_from_slice(key);
    k
}

impl Store for SledStore {
    fn lock_key_operations(&self) -> Result<Option<crate::StoreLock>, StoreError> {
        self.key_ops.lock()
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        self.key_ops.held()
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db()
            .get(full_key(space, key))
            .map_err(map_sled)?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        let skip = 1 + space.name().len();
        Box::new(
            self.db()
                .scan_prefix(full_key(space, prefix))
                .map(move |r| match r {
                    Ok((k, v)) => Ok((k[skip..].to_vec(), v.to_vec())),
                    Err(e) => Err(map_sled(e)),
                }),
        )
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // Poisoning is harmless: the guard protects no data, only the check-then-apply order.
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        for p in &batch.preconditions {
            let current = self.db().get(full_key(p.space, &p.key)).map_err(map_sled)?;
            if current.as_deref() != p.expected.as_deref() {
                return Err(StoreError::Conflict);
            }
        }
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put { space, key, value } => b.insert(full_key(space, &key), value),
                Op::Delete { space, key } => b.remove(full_key(space, &key)),
            }
        }
        self.db().apply_batch(b).map_err(map_sled)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db().flush().map_err(map_sled)?;
        self.fsync_files()
    }

    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        read_doc_in(&self.dir, name)
    }

    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name.name());
        let tmp = self.dir.join(format!("{}.tmp", name.name()));
        // A temporary file left by a crash, or anything planted in its place (a link to another
        // file), is removed, not followed; the new one is created exclusively.
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_file(&tmp)
                .map_err(|e| StoreError::io(format!("cannot remove {}", tmp.display()), e))?;
        }
        let mut f = private(OpenOptions::new().write(true).create_new(true))
            .open(&tmp)
            .map_err(|e| StoreError::io(format!("cannot create {}", tmp.display()), e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io(format!("cannot write {}", tmp.display()), e))?;
        drop(f);
        fs::rename(&tmp, &path)
            .map_err(|e| StoreError::io(format!("cannot replace {}", path.display()), e))?;
        sync_dir(&self.dir)
    }

    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        // No commit may land between reading the records and the swap.
        let _writing = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        // 1. Build the new store beside the current one, and make it durable. A crash here
        //    leaves `store.new` behind, which the next open deletes.
        let new_path = self.dir.join(STORE_NEW);
        if new_path.exists() {
            fs::remove_dir_all(&new_path)
                .map_err(|e| StoreError::io(format!("cannot remove {}", new_path.display()), e))?;
        }
        {
            let new_db = open_sled(&new_path)?;
            let mut batch = sled::Batch::default();
            let mut pending = 0usize;
            for r in records {
                let (space, k, v) = r?;
                pending += k.len() + v.len();
                batch.insert(full_key(space, &k), v);
                if pending > 8 << 20 {
                    new_db
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(map_sled)?;
                    pending = 0;
                }
            }
            new_db.apply_batch(batch).map_err(map_sled)?;
            new_db.flush().map_err(map_sled)?;
            fsync_store_files(
                &new_path,
                &Mutex::new(HashSet::new()),
                &Mutex::new(HashSet::new()),
            )?;
            make_private(&new_path)?;
        }
        sync_dir(&self.dir)?;
        // 2. Swap, while no reader or writer of this store runs. A crash between the two
        //    renames leaves only `store.new`, complete, which the next open puts in place; a
        //    crash after them leaves `store.old`, which the next open deletes.
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        let (store, old) = (self.dir.join(STORE_DIR), self.dir.join(STORE_OLD));
        let rename = |from: &Path, to: &Path| {
            fs::rename(from, to)
                .map_err(|e| StoreError::io(format!("cannot rename {}", from.display()), e))
        };
        rename(&store, &old)?;
        rename(&new_path, &store)?;
        sync_dir(&self.dir)?;
        *db = open_sled(&store)?;
        fs::remove_dir_all(&old)
            .map_err(|e| StoreError::io(format!("cannot remove {}", old.display()), e))?;
        sync_dir(&self.dir)?;
        // Blob and file names restart in the new store.
        self.synced_blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.synced_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name.name());
        let existed = path.exists();
        let mut f = private(OpenOptions::new().append(true).create(true))
            .open(&path)
            .map_err(|e| StoreError::io(format!("cannot open {}", path.display()), e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| StoreError::io(format!("cannot append to {}", path.display()), e))?;
        if !existed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
