//! `carnet backup FILE` and `carnet restore FILE`: no passphrase needed, ciphertext only.

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use carnet_core::{restore_backup, write_backup};
use carnet_storage::{AnyStore, Location, PgAddress, PgStore, SledStore, StoreError};

use crate::args::Global;
use crate::context;
use crate::error::CliError;
use crate::render;

pub fn backup(g: &Global, file: &Path) -> Result<(), CliError> {
    let location = context::vault_location(g)?;
    // A directory's lock keeps every writer out while the archive is made, and so does a
    // running server's freeze (its writes wait); a database is read in one snapshot while
    // others keep writing: either way the archive is one moment.
    let (store, frozen) = match context::open_store(&location, g)? {
        AnyStore::Postgres(pg) => (AnyStore::Postgres(pg.snapshot()?), None),
        AnyStore::Relay(relay) => {
            let frozen = relay.freeze()?;
            (AnyStore::Relay(relay), Some(frozen))
        }
        sled => (sled, None),
    };
    let tmp = file.with_extension("carnet-partial");
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", tmp.display())))?;
    let mut w = BufWriter::new(f);
    let result = write_backup(&store, &mut w)
        .map_err(CliError::from)
        .and_then(|s| {
            let f = w.into_inner().map_err(|e| {
                CliError::failure(format!("cannot write {}: {}", tmp.display(), e.error()))
            })?;
            f.sync_all()
                .map_err(|e| CliError::failure(format!("cannot write {}: {e}", tmp.display())))?;
            Ok(s)
        })
        .and_then(|s| match frozen {
            Some(f) => f.thaw().map(|()| s).map_err(|e| {
                CliError::from(e).hint("the server's writes were held too long: run the backup again (at a quieter time)")
            }),
            None => Ok(s),
        });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if file.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(
            CliError::failure(format!("{} already exists", file.display()))
                .hint("choose a new file name"),
        );
    }
    fs::rename(&tmp, file)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", file.display())))?;
    if g.json {
        return render::print_json(&serde_json::json!({
            "records": summary.records, "documents": summary.documents, "bytes": summary.bytes,
        }));
    }
    render::print(&format!(
        "Backed up {} records and {} key documents ({} bytes, ciphertext only) to {}.\n",
        summary.records,
        summary.documents,
        summary.bytes,
        file.display()
    ))
}

/// Removes what restores killed before their end left beside the target: directories named
/// `prefix…` (only directories, never followed if they are links).
fn remove_stale_staging(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
            && e.file_type().is_ok_and(|t| t.is_dir());
        if stale {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// What a restore says when the archive is refused.
fn archive_error(file: &Path, e: carnet_core::Error) -> CliError {
    match e {
        carnet_core::Error::Integrity(i) => CliError::new(
            crate::error::Exit::Integrity,
            format!(
                "the archive is damaged ({}): nothing was restored",
                i.problem()
            ),
        )
        .hint("use another copy of the backup"),
        carnet_core::Error::Foreign => {
            CliError::failure(format!("{} is not a Carnet backup", file.display()))
        }
        other => other.into(),
    }
}

pub fn restore(g: &Global, file: &Path) -> Result<(), CliError> {
    let dir = match context::vault_location(g)? {
        Location::Dir(dir) => dir,
        Location::Postgres(address) => return restore_postgres(g, file, &address),
    };
    if dir.exists()
        && fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(CliError::failure(format!("{} is not empty", dir.display()))
            .hint("restore into a new or empty directory; nothing was changed"));
    }
    let input = fs::File::open(file)
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", file.display())))?;
    // Restore into a fresh private directory beside the target (mkdtemp: 0700, a new random
    // name nobody could plant), then rename it into place: a failed restore leaves nothing.
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", parent.display())))?;
    let prefix = format!(".{name}.restoring-");
    remove_stale_staging(&parent, &prefix);
    let staging = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&parent)
        .map_err(|e| {
            CliError::failure(format!(
                "cannot create a directory in {}: {e}",
                parent.display()
            ))
        })?;
    let summary = (|| {
        let store = SledStore::create(staging.path())?;
        let s = restore_backup(input, &store).map_err(|e| archive_error(file, e))?;
        drop(store);
        let _ = fs::remove_file(staging.path().join("carnet.lock"));
        Ok::<_, CliError>(s)
    })()?;
    // From here on the directory is the restored vault: it must not be deleted on drop.
    let staging = staging.keep();
    if dir.exists() {
        fs::remove_dir(&dir)
            .map_err(|e| CliError::failure(format!("cannot replace {}: {e}", dir.display())))?;
    }
    fs::rename(&staging, &dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    if let Some(parent) = dir.parent() {
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    // A restore is a deliberate return to an older state, here and only here: this machine
    // forgets what it saw of the vault at this location, and accepts it as restored.
    let id = carnet_core::vault_id(&SledStore::documents(&dir))
        .ok()
        .flatten();
    restored(g, &Location::Dir(dir), id, &summary)
}

/// A restore into a PostgreSQL database: the new vault is written in one transaction, so a
/// restore that fails or is killed leaves nothing.
fn restore_postgres(g: &Global, file: &Path, address: &PgAddress) -> Result<(), CliError> {
    let input = fs::File::open(file)
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", file.display())))?;
    let store = PgStore::begin_create(address).map_err(|e| match e {
        StoreError::NotEmpty(_) => {
            CliError::failure(format!("{} already holds a vault", address.location()))
                .hint("restore into a new vault name (?vault=NAME); nothing was changed")
        }
        other => other.into(),
    })?;
    let summary = restore_backup(input, &store).map_err(|e| archive_error(file, e))?;
    store.finish()?;
    let id = carnet_core::vault_id(&store).ok().flatten();
    restored(
        g,
        &Location::Postgres(Box::new(address.clone())),
        id,
        &summary,
    )
}

/// After a restore: a deliberate return to an older state, here and only here, so this
/// machine forgets what it saw of the vault at this location and accepts it as restored.
fn restored(
    g: &Global,
    location: &Location,
    id: Option<[u8; 16]>,
    summary: &carnet_core::BackupSummary,
) -> Result<(), CliError> {
    let forgotten = id
        .and_then(|id| crate::state::Memory::of(id, location))
        .map(|m| m.forget());
    if let Some(Err(why)) = forgotten {
        eprintln!("carnet: warning: {why}: this machine may refuse the restored vault as rolled back (accept it with `carnet audit accept-rewind`)");
    }
    if g.json {
        return render::print_json(&serde_json::json!({
            "records": summary.records, "documents": summary.documents,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Restored {} records and {} key documents into {}. Run `carnet verify` to check them.",
        summary.records,
        summary.documents,
        location.describe()
    )
    .map_err(render::stdout_error)
}
