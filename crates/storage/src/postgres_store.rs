//! The PostgreSQL backend (ADR 0017): many vaults in one database, each isolated by a vault
//! number in every row; records and documents in three tables, created and migrated by the
//! program itself; a batch is one transaction whose preconditions compare SHA-256 digests
//! (never the values themselves) under row locks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls};
use sha2::{Digest, Sha256};

use crate::pg_address::PgAddress;
use crate::pg_tls::{connector, Tls};
use crate::{
    Batch, DocName, Entry, EntryIter, Op, Precondition, Space, SpacedEntry, Store, StoreError,
    StoreLock,
};

/// The version of the tables this code writes. A database whose tables a newer Carnet wrote is
/// refused ([`StoreError::Unsupported`]).
pub const SCHEMA_VERSION: i32 = 1;

/// Rows read per round trip by a scan.
const SCAN_PAGE: i64 = 512;

/// Connections kept open for reuse.
const IDLE_CONNECTIONS: usize = 8;

/// The tables, version 1. Every name starts with `carnet_`: the tables live beside another
/// program's in a shared database.
const SCHEMA_V1: &str = "
CREATE TABLE carnet_vaults (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE carnet_records (
    vault bigint NOT NULL REFERENCES carnet_vaults (id),
    space text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    digest bytea NOT NULL,
    PRIMARY KEY (vault, space, key)
);
-- Ciphertext does not compress: store it out of line without trying.
ALTER TABLE carnet_records ALTER COLUMN value SET STORAGE EXTERNAL;
CREATE TABLE carnet_documents (
    vault bigint NOT NULL REFERENCES carnet_vaults (id),
    name text NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (vault, name)
);
";

/// A vault's store in a PostgreSQL database. Cheap to share between threads: each operation
/// takes a connection from a small pool.
pub struct PgStore {
    address: PgAddress,
    tls: Tls,
    vault: i64,
    conn: Conn,
    /// Connections that held the writers' turn, kept for the next.
    turns: std::sync::Arc<Mutex<Vec<Client>>>,
    /// A session's transaction committed ([`PgStore::finish`]): from then on each batch is a
    /// transaction of its own again, on the session's connection.
    committed: std::sync::atomic::AtomicBool,
}

/// A held writers' turn: given back (and its connection kept for the next) when dropped; a
/// connection that breaks takes the lock with it.
struct Turn {
    client: Option<Client>,
    idle: std::sync::Arc<Mutex<Vec<Client>>>,
    id: (i32, i32),
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(mut c) = self.client.take() {
            if c.execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&self.id.0, &self.id.1],
            )
            .is_ok()
            {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < IDLE_CONNECTIONS {
                    idle.push(c);
                }
            }
        }
    }
}

/// The key-operation lock, held by a connection of its own: given back explicitly when
/// dropped (a closed connection's server process releases its locks only as it exits, a
/// moment later, and the next operation would find the lock still taken).
struct KeyOpLock {
    client: Client,
    id: (i32, i32),
}

impl Drop for KeyOpLock {
    fn drop(&mut self) {
        // If this fails, the connection's end releases the lock anyway.
        let _ = self.client.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&self.id.0, &self.id.1],
        );
    }
}

/// How a store reaches the server.
#[allow(clippy::large_enum_variant)] // one value per store
enum Conn {
    /// A small pool: each operation on a connection of its own, each batch a transaction.
    Pool(Mutex<Vec<Client>>),
    /// One connection inside one transaction that every operation joins: a snapshot that reads
    /// one moment ([`PgStore::snapshot`]), or a vault written whole or not at all
    /// ([`PgStore::begin_create`]).
    Session(Mutex<Client>),
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("vault", &self.address.location())
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as one line that names no value (the server's DETAIL lines can quote a
/// row's key: ciphertext, but still not for a log).
fn pg_error(context: &str, e: &postgres::Error) -> StoreError {
    if is_race(e) {
        return StoreError::Conflict;
    }
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::LOCK_NOT_AVAILABLE => StoreError::Locked,
        // The role lacks a grant, or row-level security refuses the row (a clinic's role
        // reaching beyond its vault, docs/postgresql-hosting.md): nothing was written.
        Some(db) if *db.code() == SqlState::INSUFFICIENT_PRIVILEGE => StoreError::Denied(format!(
            "{context}: {} (SQLSTATE {}; the role may not do this in this database)",
            db.message(),
            db.code().code()
        )),
        Some(db) => StoreError::Unavailable(format!(
            "{context}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        // The server went away (a restart, a crash, a network cut): what was acknowledged is
        // committed; the statement in flight was not acknowledged.
        None if e.is_closed() || std::error::Error::source(e).is_some() => {
            StoreError::Unavailable(format!(
                "{context}: the connection to PostgreSQL was lost ({})",
                std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
            ))
        }
        None => StoreError::Unavailable(format!("{context}: {e}")),
    }
}

/// Whether `e` is a lost race between transactions (nothing was written).
fn is_race(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Column `i` of `row`, as Carnet's tables define it: a column another program changed (its
/// type, a NULL) is [`StoreError::Unsupported`], never a panic.
fn col<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|_| {
        StoreError::Unsupported(
            "a column of Carnet's tables is not what Carnet made (its type was changed)".into(),
        )
    })
}

fn digest(value: &[u8]) -> Vec<u8> {
    Sha256::digest(value).to_vec()
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: there
/// is none, every key from `prefix` on qualifies).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgStore {
    /// Connects to the database `uri` names and creates the vault `vault=NAME` in it (the
    /// tables too, on first use); the password, if the server asks for one, from libpq's
    /// password file. [`StoreError::NotEmpty`] if the vault exists.
    pub fn create(uri: &str) -> Result<Self, StoreError> {
        Self::create_at(&Self::address(uri)?)
    }

    /// Connects to the vault `uri` names, as [`PgStore::create`] does. [`StoreError::NotFound`]
    /// if the database holds no vault of that name.
    pub fn open(uri: &str) -> Result<Self, StoreError> {
        Self::open_at(&Self::address(uri)?)
    }

    /// Whether the database `uri` names holds the vault it names (tables absent: no).
    pub fn exists(uri: &str) -> Result<bool, StoreError> {
        Self::exists_at(&Self::address(uri)?)
    }

    /// Creates Carnet's tables in the database at `address` (or checks that they are a version
    /// this code reads), without creating a vault: for the role that is to own them, before
    /// other roles are granted their use (docs/postgresql-hosting.md).
    pub fn prepare_tables(address: &PgAddress) -> Result<(), StoreError> {
        let tls = connector(address)?;
        let mut client = connect(address, &tls)?;
        migrate(&mut client)
    }

    fn address(uri: &str) -> Result<PgAddress, StoreError> {
        let mut address = PgAddress::parse(uri)?;
        address.use_pgpass()?;
        Ok(address)
    }

    /// [`PgStore::create`] at a parsed address (its password already chosen).
    pub fn create_at(address: &PgAddress) -> Result<Self, StoreError> {
        let tls = connector(address)?;
        let mut client = connect(address, &tls)?;
        migrate(&mut client)?;
        let vault = insert_vault(&mut client, address.vault_name())?;
        Ok(Self::with(address.clone(), tls, vault, client))
    }

    /// [`PgStore::open`] at a parsed address.
    pub fn open_at(address: &PgAddress) -> Result<Self, StoreError> {
        let tls = connector(address)?;
        let mut client = connect(address, &tls)?;
        let name = address.vault_name();
        if !has_tables(&mut client)? {
            return Err(StoreError::NotFound(address.location()));
        }
        migrate(&mut client)?;
        let row = client
            .query_opt("SELECT id FROM carnet_vaults WHERE name = $1", &[&name])
            .map_err(|e| pg_error("cannot read the vaults", &e))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(address.location()));
        };
        Ok(Self::with(address.clone(), tls, col(&row, 0)?, client))
    }

    /// [`PgStore::exists`] at a parsed address.
    pub fn exists_at(address: &PgAddress) -> Result<bool, StoreError> {
        let tls = connector(address)?;
        let mut client = connect(address, &tls)?;
        // Tables this code could not use are said now, before anything is asked or made.
        check_schema(&mut client)?;
        if !has_tables(&mut client)? {
            return Ok(false);
        }
        let row = client
            .query_opt(
                "SELECT 1 FROM carnet_vaults WHERE name = $1",
                &[&address.vault_name()],
            )
            .map_err(|e| pg_error("cannot read the vaults", &e))?;
        Ok(row.is_some())
    }

    fn with(address: PgAddress, tls: Tls, vault: i64, client: Client) -> Self {
        PgStore {
            address,
            tls,
            vault,
            conn: Conn::Pool(Mutex::new(vec![client])),
            committed: Default::default(),
            turns: Default::default(),
        }
    }

    /// Begins a new vault at `address` inside one transaction: nothing of it is visible, to
    /// others or after a crash, until [`PgStore::finish`] commits it whole (a restore that
    /// fails or is killed leaves nothing). [`StoreError::NotEmpty`] if the vault exists; a
    /// concurrent creation of the same vault waits for this one's end.
    pub fn begin_create(address: &PgAddress) -> Result<Self, StoreError> {
        let tls = connector(address)?;
        let mut client = connect(address, &tls)?;
        migrate(&mut client)?;
        client
            .batch_execute("BEGIN")
            .map_err(|e| pg_error("cannot begin", &e))?;
        let vault = insert_vault(&mut client, address.vault_name())?;
        Ok(PgStore {
            address: address.clone(),
            tls,
            vault,
            conn: Conn::Session(Mutex::new(client)),
            committed: Default::default(),
            turns: Default::default(),
        })
    }

    /// Commits what a store from [`PgStore::begin_create`] wrote; a pooled store has nothing
    /// to commit. The store is usable afterwards, one connection at a time.
    pub fn finish(&self) -> Result<(), StoreError> {
        match &self.conn {
            Conn::Pool(_) => Ok(()),
            Conn::Session(c) => {
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                // A transaction that failed would answer COMMIT with a ROLLBACK, not an error:
                // a statement first says whether it still stands.
                c.batch_execute("SELECT 1")
                    .map_err(|e| pg_error("the vault's transaction failed", &e))?;
                let row = c
                    .query_one(
                        "SELECT count(*) FROM carnet_vaults WHERE id = $1",
                        &[&self.vault],
                    )
                    .map_err(|e| pg_error("cannot read the vaults", &e))?;
                let found: i64 = col(&row, 0)?;
                if found != 1 {
                    return Err(StoreError::Unavailable(
                        "the new vault is not in its transaction".into(),
                    ));
                }
                c.batch_execute("COMMIT")
                    .map_err(|e| pg_error("cannot commit the vault", &e))?;
                self.committed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// A read-only view of the vault at one moment (a repeatable-read transaction), while
    /// others keep writing: what a backup reads.
    pub fn snapshot(&self) -> Result<PgStore, StoreError> {
        let mut client = connect(&self.address, &self.tls)?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(|e| pg_error("cannot begin a snapshot", &e))?;
        Ok(PgStore {
            address: self.address.clone(),
            tls: self.tls.clone(),
            vault: self.vault,
            conn: Conn::Session(Mutex::new(client)),
            committed: Default::default(),
            turns: Default::default(),
        })
    }

    /// The advisory lock of this vault's key operations: Carnet's class (`CRNT`) and the
    /// vault's number.
    fn key_op_lock_id(&self) -> (i32, i32) {
        (0x4352_4e54, (self.vault & 0x7fff_ffff) as i32)
    }

    /// Whether operations join the session's open transaction (before [`PgStore::finish`]).
    fn in_session(&self) -> bool {
        matches!(self.conn, Conn::Session(_))
            && !self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Where the vault is, naming no secret (`postgresql://user@host:port/db?vault=NAME`).
    pub fn location(&self) -> String {
        self.address.location()
    }

    /// The vault's name in its database.
    pub fn vault_name(&self) -> &str {
        self.address.vault_name()
    }

    /// Runs `f` on a pooled connection (a new one when none is idle); the connection goes back
    /// to the pool unless it broke.
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pool = match &self.conn {
            Conn::Pool(pool) => pool,
            // A failed statement aborts the session's transaction: it reports the first error,
            // then every later statement fails too, and nothing is committed.
            Conn::Session(c) => return f(&mut c.lock().unwrap_or_else(|p| p.into_inner())),
        };
        // Poisoning is harmless: the pool only holds idle connections.
        let idle = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.address, &self.tls)?,
        };
        let result = f(&mut client);
        if !client.is_closed() {
            let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(client);
            }
        }
        result
    }

    /// One page of a scan: up to [`SCAN_PAGE`] records of `space` from `from` (exclusive after
    /// the first page) below `end`.
    fn page(
        &self,
        space: Space,
        from: &[u8],
        inclusive: bool,
        end: Option<&[u8]>,
    ) -> Result<Vec<Entry>, StoreError> {
        self.with_client(|c| {
            let rows = c
                .query(
                    "SELECT key, value FROM carnet_records
                     WHERE vault = $1 AND space = $2
                       AND (key > $3 OR ($4 AND key = $3))
                       AND ($5::bytea IS NULL OR key < $5)
                     ORDER BY key LIMIT $6",
                    &[
                        &self.vault,
                        &space.name(),
                        &from,
                        &inclusive,
                        &end,
                        &SCAN_PAGE,
                    ],
                )
                .map_err(|e| pg_error("cannot scan the records", &e))?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
        })
    }
}

fn connect(address: &PgAddress, tls: &Tls) -> Result<Client, StoreError> {
    let config = &address.config;
    let connected = match tls {
        Tls::None => config.connect(NoTls),
        Tls::Rustls(make) => config.connect(make.clone()),
    };
    let mut client = connected.map_err(|e| connect_error(address, &e))?;
    // An acknowledged write is durable whatever the server's default. A lock another session
    // of the database holds (a table locked by hand, a hung process) is waited for this long
    // at most, then the command says the vault is in use (exit 6), instead of hanging.
    client
        .batch_execute("SET synchronous_commit = on; SET lock_timeout = '30s'")
        .map_err(|e| pg_error("cannot configure the session", &e))?;
    Ok(client)
}

/// Why a connection failed, in one line: refused credentials are [`StoreError::Denied`].
fn connect_error(address: &PgAddress, e: &postgres::Error) -> StoreError {
    let at = address.location();
    if let Some(db) = e.as_db_error() {
        // Class 28: invalid authorization (a wrong password, a role pg_hba.conf refuses).
        if db.code().code().starts_with("28") {
            return StoreError::Denied(format!(
                "PostgreSQL refused the credentials for {at}: {}",
                db.message()
            ));
        }
        return StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {at}: {}",
            db.message()
        ));
    }
    let text = e.to_string();
    let why = std::error::Error::source(e)
        .map(|s| format!("{text}: {s}"))
        .unwrap_or(text);
    if why.contains("password missing") {
        return StoreError::Denied(format!(
            "PostgreSQL asks for a password for {at} and none was found (in ~/.pgpass, PGPASSFILE or --db-password-file)"
        ));
    }
    StoreError::Unavailable(format!("cannot connect to PostgreSQL at {at}: {why}"))
}

/// Adds the vault `name` to the database, returning its number; [`StoreError::NotEmpty`] if
/// it exists.
fn insert_vault(client: &mut Client, name: &str) -> Result<i64, StoreError> {
    let inserted = client
        .query_opt(
            "INSERT INTO carnet_vaults (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&name],
        )
        .map_err(|e| pg_error("cannot create the vault", &e))?;
    match inserted {
        Some(row) => col(&row, 0),
        None => Err(StoreError::NotEmpty(format!(
            "the vault {name} in this database"
        ))),
    }
}

/// Whether the database holds Carnet's tables.
fn has_tables(client: &mut Client) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE tablename = 'carnet_vaults' AND schemaname = current_schema()",
            &[],
        )
        .map_err(|e| pg_error("cannot read the tables", &e))?;
    Ok(row.is_some())
}

/// Creates the tables in a database that has none, or checks that they are a version this code
/// reads; creations serialized between processes by an advisory lock, taken only when the
/// tables are missing (a lock every open took would let any role of the database hold up
/// every vault's commands).
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    if check_schema(client)? {
        return Ok(());
    }
    let mut tx = client
        .transaction()
        .map_err(|e| pg_error("cannot begin", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock(4242424242)", &[])
        .map_err(|e| pg_error("cannot lock the schema", &e))?;
    if !check_schema(&mut tx)? {
        tx.batch_execute("CREATE TABLE carnet_schema (version integer NOT NULL)")
            .and_then(|()| tx.batch_execute(SCHEMA_V1))
            .and_then(|()| {
                tx.execute(
                    "INSERT INTO carnet_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .map(|_| ())
            })
            .map_err(|e| pg_error("cannot create Carnet's tables", &e))?;
    }
    tx.commit().map_err(|e| pg_error("cannot commit", &e))
}

/// Whether the database holds Carnet's tables in a version this code reads (`false`: none of
/// them, they may be created); a newer version, or a table of Carnet's name that Carnet did
/// not make, is [`StoreError::Unsupported`].
fn check_schema(c: &mut impl GenericClient) -> Result<bool, StoreError> {
    let has = c
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE tablename = 'carnet_schema' AND schemaname = current_schema()",
            &[],
        )
        .map_err(|e| pg_error("cannot read the tables", &e))?
        .is_some();
    if !has {
        let taken = c
            .query_opt(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()
                 AND tablename IN ('carnet_vaults', 'carnet_records', 'carnet_documents')",
                &[],
            )
            .map_err(|e| pg_error("cannot read the tables", &e))?;
        if let Some(row) = taken {
            let table: String = col(&row, 0)?;
            return Err(StoreError::Unsupported(format!(
                "the database holds a table {table} that Carnet did not make (no carnet_schema): use another database or schema"
            )));
        }
        return Ok(false);
    }
    let version: Option<i32> = c
        .query_opt("SELECT max(version) FROM carnet_schema", &[])
        .map_err(|e| pg_error("cannot read Carnet's schema version", &e))?
        .map(|r| col::<Option<i32>>(&r, 0))
        .transpose()?
        .flatten();
    match version {
        Some(SCHEMA_VERSION) => Ok(true),
        Some(v) if v > SCHEMA_VERSION => Err(StoreError::Unsupported(format!(
            "the database's Carnet tables are version {v}, newer than this Carnet reads ({SCHEMA_VERSION}): upgrade Carnet"
        ))),
        _ => Err(StoreError::Unsupported(
            "the table carnet_schema holds no version this Carnet knows".into(),
        )),
    }
}

/// Checks a batch's preconditions (under row locks) and applies its last operation on each
/// record, inside the caller's transaction.
fn apply_batch(
    tx: &mut impl GenericClient,
    vault: i64,
    pre: &[Precondition],
    last: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    // One round trip per kind of lock, whatever the number of preconditions: a record the
    // batch writes is locked for update; one it only requires (the fence, which every writer
    // requires) for share, so that such writers do not queue on it. Rows are locked in key
    // order (the sort runs below the lock), the same order for every writer.
    let (written, read): (Vec<&Precondition>, Vec<&Precondition>) = pre
        .iter()
        .partition(|p| last.contains_key(&(p.space.name(), p.key.clone())));
    for (group, lock) in [(written, "UPDATE"), (read, "SHARE")] {
        if group.is_empty() {
            continue;
        }
        let spaces: Vec<&str> = group.iter().map(|p| p.space.name()).collect();
        let keys: Vec<&[u8]> = group.iter().map(|p| p.key.as_slice()).collect();
        let sql = format!(
            "SELECT r.space, r.key, r.digest FROM carnet_records r
             JOIN unnest($2::text[], $3::bytea[]) AS w(space, key)
               ON r.space = w.space AND r.key = w.key
             WHERE r.vault = $1 ORDER BY r.space, r.key FOR {lock} OF r"
        );
        let rows = tx
            .query(&sql, &[&vault, &spaces, &keys])
            .map_err(|e| pg_error("cannot check a precondition", &e))?;
        let mut found: BTreeMap<(String, Vec<u8>), Vec<u8>> = BTreeMap::new();
        for r in &rows {
            found.insert((col(r, 0)?, col(r, 1)?), col(r, 2)?);
        }
        for p in group {
            let current = found.get(&(p.space.name().to_string(), p.key.clone()));
            if current.map(Vec::as_slice) != p.expected.as_deref().map(digest).as_deref() {
                return Err(StoreError::Conflict);
            }
        }
    }
    let (mut ps, mut pk, mut pv, mut pd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ds, mut dk) = (Vec::new(), Vec::new());
    for ((space, key), value) in last {
        match value {
            Some(v) => {
                ps.push(space);
                pd.push(digest(&v));
                pk.push(key);
                pv.push(v);
            }
            None => {
                ds.push(space);
                dk.push(key);
            }
        }
    }
    if !ds.is_empty() {
        tx.execute(
            "DELETE FROM carnet_records r USING unnest($2::text[], $3::bytea[]) AS d(space, key)
                 WHERE r.vault = $1 AND r.space = d.space AND r.key = d.key",
            &[&vault, &ds, &dk],
        )
        .map_err(|e| pg_error("cannot delete records", &e))?;
    }
    if !ps.is_empty() {
        tx.execute(
            "INSERT INTO carnet_records (vault, space, key, value, digest)
                 SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::bytea[])
                 ON CONFLICT (vault, space, key)
                 DO UPDATE SET value = EXCLUDED.value, digest = EXCLUDED.digest",
            &[&vault, &ps, &pk, &pv, &pd],
        )
        .map_err(|e| pg_error("cannot write records", &e))?;
    }
    Ok(())
}

/// Iterates over a scan, a page at a time.
struct Scan<'a> {
    store: &'a PgStore,
    space: Space,
    end: Option<Vec<u8>>,
    from: Vec<u8>,
    first: bool,
    page: std::vec::IntoIter<Entry>,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.page.next() {
            return Some(Ok(e));
        }
        if self.done {
            return None;
        }
        match self
            .store
            .page(self.space, &self.from, self.first, self.end.as_deref())
        {
            Ok(rows) => {
                self.first = false;
                self.done = (rows.len() as i64) < SCAN_PAGE;
                if let Some((k, _)) = rows.last() {
                    self.from = k.clone();
                }
                self.page = rows.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Store for PgStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_client(|c| {
            let row = c
                .query_opt(
                    "SELECT value FROM carnet_records WHERE vault = $1 AND space = $2 AND key = $3",
                    &[&self.vault, &space.name(), &key],
                )
                .map_err(|e| pg_error("cannot read a record", &e))?;
            row.map(|r| col(&r, 0)).transpose()
        })
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        Box::new(Scan {
            store: self,
            space,
            end: prefix_end(prefix),
            from: prefix.to_vec(),
            first: true,
            page: Vec::new().into_iter(),
            done: false,
        })
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // The last operation on each record wins, as applying them in order would leave it.
        let mut last: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for op in batch.ops {
            match op {
                Op::Put { space, key, value } => last.insert((space.name(), key), Some(value)),
                Op::Delete { space, key } => last.insert((space.name(), key), None),
            };
        }
        let mut pre = batch.preconditions;
        // One order for every writer's row locks: fewer deadlocks.
        pre.sort_by(|a, b| (a.space.name(), &a.key).cmp(&(b.space.name(), &b.key)));
        let session = self.in_session();
        self.with_client(|c| {
            if session {
                // Inside the session's transaction already.
                return apply_batch(c, self.vault, &pre, last);
            }
            let mut tx = c.transaction().map_err(|e| pg_error("cannot begin", &e))?;
            apply_batch(&mut tx, self.vault, &pre, last)?;
            tx.commit().map_err(|e| pg_error("cannot commit", &e))
        })
    }

    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        // A session-level advisory lock on a connection of its own, held by the guard: the
        // server releases it when the guard drops the connection, or when the process dies.
        let mut client = connect(&self.address, &self.tls)?;
        // The connection idles for the whole operation: no server timeout may end it (and
        // with it the lock) while the operation still works.
        client
            .batch_execute(
                "SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0",
            )
            .map_err(|e| pg_error("cannot configure the session", &e))?;
        let (class, object) = self.key_op_lock_id();
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &object])
            .map_err(|e| pg_error("cannot take the key-operation lock", &e))?;
        let taken: bool = col(&row, 0)?;
        if !taken {
            return Err(StoreError::Conflict);
        }
        Ok(Some(StoreLock::new(Box::new(KeyOpLock {
            client,
            id: (class, object),
        }))))
    }

    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        if self.in_session() {
            return Ok(None); // one connection, one transaction: nobody to queue with
        }
        let idle = self.turns.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => {
                let mut c = connect(&self.address, &self.tls)?;
                // A holder that hangs (a stopped process) is waited for this long at most.
                c.batch_execute("SET lock_timeout = '30s'")
                    .map_err(|e| pg_error("cannot configure the session", &e))?;
                c
            }
        };
        let (class, object) = (0x4352_4e57, (self.vault & 0x7fff_ffff) as i32);
        client
            .execute("SELECT pg_advisory_lock($1, $2)", &[&class, &object])
            .map_err(|e| pg_error("cannot take the writers' turn", &e))?;
        Ok(Some(StoreLock::new(Box::new(Turn {
            client: Some(client),
            idle: std::sync::Arc::clone(&self.turns),
            id: (class, object),
        }))))
    }

    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        let (class, object) = self.key_op_lock_id();
        self.with_client(|c| {
            // Read from the server's lock table, without taking anything: a test that took
            // the lock, even for an instant, would make a key operation starting then fail
            // to take it. (Two int4 keys: classid, objid, objsubid 2.)
            let row = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks \
                     WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND classid::text = $1 AND objid::text = $2 AND objsubid = 2)",
                    &[&class.to_string(), &object.to_string()],
                )
                .map_err(|e| pg_error("cannot test the key-operation lock", &e))?;
            Ok(Some(col(&row, 0)?))
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every commit returned only once PostgreSQL made it durable (synchronous_commit).
        Ok(())
    }

    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_client(|c| {
            let row = c
                .query_opt(
                    "SELECT bytes FROM carnet_documents WHERE vault = $1 AND name = $2",
                    &[&self.vault, &name.name()],
                )
                .map_err(|e| pg_error("cannot read a document", &e))?;
            row.map(|r| col(&r, 0)).transpose()
        })
    }

    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        let session = self.in_session();
        self.with_client(|c| {
            c.execute(
                "INSERT INTO carnet_documents (vault, name, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (vault, name) DO UPDATE SET bytes = EXCLUDED.bytes",
                &[&self.vault, &name.name(), &bytes],
            )
            .map_err(|e| pg_error("cannot write a document", &e))?;
            if session {
                // No vacuum inside a transaction; a session writes a new vault, with no
                // older version to remove.
                return Ok(());
            }
            // The replaced version (key material, for the keyring and the key store) is a dead
            // row until a vacuum: ask for one now (docs/key-management.md, "On PostgreSQL").
            c.batch_execute("VACUUM carnet_documents")
                .map_err(|e| pg_error("cannot vacuum the documents", &e))
        })
    }

    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.with_client(|c| {
            c.execute(
                "INSERT INTO carnet_documents (vault, name, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (vault, name) DO UPDATE SET bytes = carnet_documents.bytes || EXCLUDED.bytes",
                &[&self.vault, &name.name(), &bytes],
            )
            .map_err(|e| pg_error("cannot append to a document", &e))?;
            Ok(())
        })
    }

    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        if self.in_session() {
            return Err(StoreError::Unsupported(
                "replacing every record is not done inside a snapshot or a restore".into(),
            ));
        }
        self.with_client(|c| {
            let mut tx = c.transaction().map_err(|e| pg_error("cannot begin", &e))?;
            // The new records go to a table of this transaction first: the iterator may read the
            // old ones (through other connections, which see them until the commit).
            tx.batch_execute(
                "CREATE TEMP TABLE carnet_new (space text, key bytea, value bytea) ON COMMIT DROP",
            )
            .map_err(|e| pg_error("cannot stage the records", &e))?;
            let mut chunk: Vec<SpacedEntry> = Vec::new();
            let flush = |tx: &mut postgres::Transaction<'_>, chunk: &mut Vec<SpacedEntry>| {
                let (mut s, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
                for (space, key, value) in chunk.drain(..) {
                    s.push(space.name());
                    k.push(key);
                    v.push(value);
                }
                tx.execute(
                    "INSERT INTO carnet_new SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
                    &[&s, &k, &v],
                )
                .map(|_| ())
                .map_err(|e| pg_error("cannot stage the records", &e))
            };
            for r in records {
                chunk.push(r?);
                if chunk.len() >= 1000 {
                    flush(&mut tx, &mut chunk)?;
                }
            }
            if !chunk.is_empty() {
                flush(&mut tx, &mut chunk)?;
            }
            tx.execute("DELETE FROM carnet_records WHERE vault = $1", &[&self.vault])
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO carnet_records (vault, space, key, value, digest)
                         SELECT $1, space, key, value, sha256(value) FROM carnet_new",
                        &[&self.vault],
                    )
                })
                .map_err(|e| pg_error("cannot replace the records", &e))?;
            tx.commit().map_err(|e| pg_error("cannot commit", &e))?;
            // What MVCC keeps of the old rows goes at the next vacuum; ask for it now (WAL,
            // replicas and backups keep their own history: docs/key-management.md).
            c.batch_execute("VACUUM carnet_records")
                .map_err(|e| pg_error("cannot vacuum", &e))
        })
    }
}
