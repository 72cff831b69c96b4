//! Opening the vault: where it is, the passphrase, and unlocking.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use carnet_core::{Checkpoint, Expected, Passphrase, RecoveryKey, Strength, Vault};
use carnet_storage::{AnyStore, Location, PgAddress, PgStore, RelayStore, SledStore, StoreError};
use zeroize::Zeroizing;

use crate::args::Global;
use crate::error::{CliError, Exit};
use crate::state::{slot_tag, Memory, Seen};

/// Where the vault is: --vault (a directory, or a PostgreSQL URI whose password comes from
/// --db-password-file, else libpq's password file), else the default directory.
pub fn vault_location(global: &Global) -> Result<Location, CliError> {
    let mut location = match &global.vault {
        Some(v) => Location::parse(v).map_err(|e| {
            CliError::usage(e.to_string())
                .hint("e.g. --vault 'postgresql://clinic@db.example/carnet?vault=rue-des-lilas'")
        })?,
        None => Location::Dir(default_dir()?),
    };
    if let Location::Postgres(address) = &mut location {
        match &global.db_password_file {
            Some(f) => address.use_password_file(f),
            None => address.use_pgpass(),
        }
        .map_err(|e| CliError::usage(e.to_string()))?;
    }
    Ok(location)
}

/// The default vault directory: $XDG_DATA_HOME/carnet, else ~/.local/share/carnet.
fn default_dir() -> Result<PathBuf, CliError> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("carnet"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/carnet")),
        None => Err(CliError::usage(
            "no vault directory: pass --vault DIR|URI or set CARNET_VAULT",
        )),
    }
}

/// Opens a file that holds a secret (a passphrase, a recovery key), refusing one that other
/// users can read or change, as ssh refuses such a private key.
fn open_secret_file(path: &Path, what: &str) -> Result<File, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let f = File::open(path)
        .map_err(|e| CliError::usage(format!("cannot read the {what} {}: {e}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| CliError::usage(format!("cannot read the {what} {}: {e}", path.display())))?;
    // Pipes and terminals (`/dev/stdin`) have no such meaning; regular files must be private.
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        return Err(CliError::usage(format!(
            "the {what} {} can be read or changed by other users: its mode is {mode:03o}",
            path.display()
        ))
        .hint(format!("make it yours alone: chmod 600 {}", path.display())));
    }
    Ok(f)
}

/// The passphrase from a file: its first line, without the line ending.
pub fn passphrase_from_file(path: &Path) -> Result<Passphrase, CliError> {
    let f = open_secret_file(path, "passphrase file")?;
    // Read straight into one zeroizing buffer, allocated once (no BufReader, no growth: both
    // would leave copies of the passphrase in memory).
    const MAX: usize = 64 * 1024;
    let mut line = Zeroizing::new(Vec::with_capacity(MAX));
    f.take(MAX as u64).read_to_end(&mut line).map_err(|e| {
        CliError::usage(format!(
            "cannot read the passphrase file {}: {e}",
            path.display()
        ))
    })?;
    if let Some(end) = line.iter().position(|b| *b == b'\n') {
        line.truncate(end);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err(CliError::usage(format!(
            "the passphrase file {} is empty",
            path.display()
        )));
    }
    let text = String::from_utf8(line.to_vec()).map_err(|_| {
        CliError::usage(format!(
            "the passphrase file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    Ok(Passphrase::new(text))
}

fn have_terminal() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

fn no_passphrase() -> CliError {
    CliError::usage("no passphrase: pass --passphrase-file FILE (or set CARNET_PASSPHRASE_FILE), or run on a terminal")
}

fn prompt(text: &str) -> Result<Passphrase, CliError> {
    let p = rpassword::prompt_password(text).map_err(|e| {
        CliError::usage(format!("cannot read the passphrase from the terminal: {e}"))
    })?;
    Ok(Passphrase::new(p))
}

/// The passphrase of an existing vault.
pub fn passphrase(global: &Global) -> Result<Passphrase, CliError> {
    if let Some(f) = &global.passphrase_file {
        return passphrase_from_file(f);
    }
    if !have_terminal() {
        return Err(no_passphrase());
    }
    let p = prompt(&format!("Passphrase for {}: ", global.user))?;
    if p.is_empty() {
        return Err(CliError::usage("empty passphrase"));
    }
    Ok(p)
}

/// A new passphrase for `user`'s slot: from `file`, or asked twice on the terminal. Too short
/// or too easy to guess is refused before anything else happens; guessable with some effort
/// is a warning.
pub fn new_passphrase(file: Option<&Path>, user: &str) -> Result<Passphrase, CliError> {
    let p = if let Some(f) = file {
        passphrase_from_file(f)?
    } else {
        if !have_terminal() {
            return Err(no_passphrase());
        }
        let p = prompt("New passphrase (at least 12 characters): ")?;
        check_new(&p, user)?;
        let again = prompt("Repeat the passphrase: ")?;
        if !p.ct_eq(&again) {
            return Err(CliError::usage("the two passphrases differ"));
        }
        p
    };
    check_new(&p, user)?;
    Ok(p)
}

fn check_new(p: &Passphrase, user: &str) -> Result<(), CliError> {
    match p.check_new(user) {
        Ok(Strength::Weak) => {
            eprintln!("carnet: warning: this passphrase could be guessed with some effort; a few more unrelated words would make it strong");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            Err(CliError::from(e).hint("a few unrelated words make a strong, memorable passphrase"))
        }
    }
}

/// An unlocked vault, and what this machine remembers of it: when the command is done (the
/// value dropped), the log's durable head is remembered for the next unlock to check.
pub struct Unlocked {
    vault: Vault<AnyStore>,
    memory: Option<Memory>,
    /// Whether what this machine remembered was checked (or deliberately set aside): only then
    /// may the vault's head be remembered, or a refused rollback would be accepted next time.
    trusted: bool,
}

impl std::ops::Deref for Unlocked {
    type Target = Vault<AnyStore>;
    fn deref(&self) -> &Vault<AnyStore> {
        &self.vault
    }
}

impl std::ops::DerefMut for Unlocked {
    fn deref_mut(&mut self) -> &mut Vault<AnyStore> {
        &mut self.vault
    }
}

impl Unlocked {
    /// Runs `f`, and again (keys read anew) while it fails because another administrator's
    /// key operation changed the keys meanwhile ([`carnet_core::Error::KeysChanged`]: nothing
    /// of `f` was written). Waiting for an operation still under way is the patience's part.
    pub fn again<T>(
        &mut self,
        mut f: impl FnMut(&Vault<AnyStore>) -> Result<T, carnet_core::Error>,
    ) -> Result<T, CliError> {
        let mut attempts = 0;
        loop {
            match f(&self.vault) {
                Err(carnet_core::Error::KeysChanged) if attempts < 5 => {
                    attempts += 1;
                    self.vault.reload()?;
                }
                other => return Ok(other?),
            }
        }
    }

    /// What this machine remembered of the vault before this command, if anything.
    pub fn seen(&self) -> Option<Checkpoint> {
        self.memory.as_ref().and_then(|m| m.seen().ok().flatten())
    }

    /// Remembers the vault's head now, if it was checked: after each durable step of a long
    /// command (a kill or Ctrl-C skips the end of the command). A failure is a warning.
    pub fn remember_now(&self) {
        if !self.trusted {
            return;
        }
        if let Some(m) = &self.memory {
            match self.vault.durable_head() {
                Ok(head) => {
                    if let Err(why) = m.remember(&head, &seen_now(&self.vault)) {
                        warn_no_memory(&why);
                    }
                }
                // The database went away: the command's own error says so, and nothing it
                // could not write needs remembering.
                Err(carnet_core::Error::Storage(StoreError::Unavailable(_))) => {}
                Err(e) => warn_no_memory(&format!("cannot read the vault's log head: {e}")),
            }
        }
    }

    /// Remembers the vault as it is now, whatever was remembered (a deliberate rewind).
    pub fn accept_as_is(&mut self) -> Result<Checkpoint, CliError> {
        self.trusted = true;
        let head = self.vault.durable_head()?;
        match &self.memory {
            Some(m) => m.replace(&head).map_err(|why| {
                CliError::failure(format!("cannot remember this vault's state: {why}"))
            })?,
            None => {
                return Err(CliError::failure(
                    "no state directory: set CARNET_STATE_DIR, XDG_STATE_HOME or HOME",
                ))
            }
        }
        Ok(head)
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        // Durable first: only a head on disk is remembered, and only a checked one.
        self.remember_now();
    }
}

fn warn_no_memory(why: &str) {
    eprintln!(
        "carnet: warning: {why}: this machine cannot remember the vault's state, so a rollback of it would go unnoticed here"
    );
}

/// What this machine learns of the vault from this unlock besides its head: its format, and
/// (format 2) the keyring-key version the unlocking slot holds now.
pub fn seen_now(vault: &Vault<AnyStore>) -> Seen {
    let mut seen = Seen {
        format: vault.format(),
        ..Seen::default()
    };
    if vault.keyring_key_version() > 0 {
        seen.keyed.insert(
            slot_tag(
                &vault.id(),
                &slot_name(vault.user(), vault.via_recovery_key()),
            ),
            vault.keyring_key_version(),
        );
    }
    seen
}

/// The name of the slot that unlocks: its user's, or the recovery key's.
fn slot_name(user: &str, via_recovery_key: bool) -> String {
    if via_recovery_key {
        "\0recovery".to_string()
    } else {
        user.to_string()
    }
}

/// What this machine saw of the vault at `location` before, for the unlock to check before
/// anything is written (a downgrade of the keyring or of the user's slot is refused there).
fn expected(store: &AnyStore, location: &Location, global: &Global) -> Expected {
    let Some(id) = carnet_core::vault_id(store).ok().flatten() else {
        return Expected::default();
    };
    let Some(memory) = Memory::of(id, location) else {
        return Expected::default();
    };
    if !matches!(memory.seen(), Ok(Some(_))) {
        return Expected::default();
    }
    let seen = memory.seen_more();
    let tag = slot_tag(
        &id,
        &slot_name(&global.user, global.recovery_key_file.is_some()),
    );
    Expected::new(seen.format, seen.keyed.get(&tag).copied().unwrap_or(0))
}

/// Checks that the vault exists, asks for the passphrase, then opens the vault's store (waiting
/// for another command that holds it, up to `--wait`) and unlocks it, and checks that the vault extends what this machine saw of it
/// (exit 5 when it was rolled back behind this machine's back).
pub fn unlock(global: &Global) -> Result<Unlocked, CliError> {
    let mut unlocked = unlock_as_found(global)?;
    if let Some(m) = &unlocked.memory {
        match m.seen() {
            Ok(Some(seen)) => unlocked.vault.check_extends(&seen).map_err(|e| {
                let rolled_back = matches!(&e, carnet_core::Error::Integrity(i)
                    if i.kind() == carnet_core::ProblemKind::RolledBack);
                let err = CliError::from(e);
                if rolled_back {
                    err.hint(format!(
                        "this machine saw a newer state of this vault: keep a copy of it and restore your latest backup; if it was put back on purpose, accept it with `carnet audit accept-rewind` (remembered in {})",
                        m.path().display()
                    ))
                } else {
                    err
                }
            })?,
            Ok(None) => warn_if_newer_elsewhere(&unlocked.vault, m),
            Err(why) => warn_no_memory(&why),
        }
    }
    unlocked.trusted = true;
    Ok(unlocked)
}

/// On first use at a location: a warning when this machine saw the same vault newer at another
/// location and this copy does not extend it (an older copy, or the vault reached through
/// another path). Not a refusal: a backup restored elsewhere to check it is older too.
fn warn_if_newer_elsewhere(vault: &Vault<AnyStore>, memory: &Memory) {
    for (location, head) in memory.elsewhere() {
        if vault.check_extends(&head).is_err() {
            eprintln!(
                "carnet: warning: this machine saw this vault in a newer state at {location}; this copy is older or diverged (if it should be the same vault, keep it aside and check it)"
            );
        }
    }
}

/// [`unlock`] without the check of what this machine saw (for `audit accept-rewind`).
pub fn unlock_as_found(global: &Global) -> Result<Unlocked, CliError> {
    let location = vault_location(global)?;
    // A database is reached before the prompt (an unreachable server or refused credentials
    // are said at once); it takes no lock.
    let early = match &location {
        Location::Dir(dir) => {
            require_vault(dir)?;
            None
        }
        Location::Postgres(address) => Some(open_postgres(address)?),
    };
    // The secret first, the vault's lock after: a desk at the passphrase prompt holds nothing.
    let secret = match &global.recovery_key_file {
        Some(f) => Err(recovery_key_from_file(f)?),
        None => Ok(passphrase(global)?),
    };
    let store = match (early, &location) {
        (Some(pg), _) => AnyStore::Postgres(pg),
        (None, Location::Dir(dir)) => open_dir(dir, global)?,
        (None, Location::Postgres(address)) => AnyStore::Postgres(open_postgres(address)?),
    };
    let expected =
        expected(&store, &location, global).waiting(std::time::Duration::from_secs(global.wait));
    let downgrade_hint = |e: carnet_core::Error| {
        let rolled_back = matches!(&e, carnet_core::Error::Integrity(i)
            if i.kind() == carnet_core::ProblemKind::RolledBack && i.location() == "keyring");
        let err = CliError::from(e);
        if rolled_back {
            err.hint(
                "this machine saw a newer keyring for this vault: an older one was put back (an attack, or an old backup put in place by hand); keep a copy of the vault and restore your latest backup",
            )
        } else {
            err
        }
    };
    let vault = match secret {
        Err(key) => Vault::unlock_with_recovery_key_expecting(store, &global.user, &key, &expected)
            .map_err(downgrade_hint)?,
        Ok(pass) => Vault::unlock_expecting(store, &global.user, &pass, &expected)
            .map_err(downgrade_hint)?,
    };
    let mut vault = vault;
    // A key operation of another desk runs alone: wait for it (up to --wait), then read the
    // keys it left.
    let quiet = global.quiet;
    vault.wait_for_key_operations(std::time::Duration::from_secs(global.wait), &mut |op| {
        if !quiet {
            eprintln!(
                "carnet: waiting for another administrator's {op} to finish (up to {} s; --wait to change)…",
                global.wait
            );
        }
    })?;
    // And the same during the command, for an operation that starts meanwhile.
    vault.set_patience(
        std::time::Duration::from_secs(global.wait),
        (!quiet).then(|| {
            let wait = global.wait;
            Box::new(move |op: &'static str| {
                eprintln!(
                    "carnet: waiting for another administrator's {op} to finish (up to {wait} s; --wait to change)…"
                )
            }) as Box<dyn Fn(&'static str) + Send + Sync>
        }),
    );
    warn_unfinished(&vault);
    let memory = Memory::of(vault.id(), &location);
    if memory.is_none() {
        warn_no_memory("no state directory (set CARNET_STATE_DIR, XDG_STATE_HOME or HOME)");
    }
    Ok(Unlocked {
        vault,
        memory,
        trusted: false,
    })
}

/// A warning on stderr for each key operation left unfinished: until it is finished, writes
/// are refused. (Shown even with --quiet: it is about the vault's safety, not progress.)
fn warn_unfinished(vault: &Vault<AnyStore>) {
    if let Ok(unfinished) = vault.unfinished() {
        for u in unfinished {
            eprintln!(
                "carnet: warning: {u} is unfinished (an administrator must run {} to finish it)",
                crate::render::finish_command(&u)
            );
        }
    }
}

/// A recovery key from a file, as printed by `init` or `key rotate-recovery`.
fn recovery_key_from_file(path: &Path) -> Result<RecoveryKey, CliError> {
    let mut f = open_secret_file(path, "recovery key file")?;
    let mut text = Zeroizing::new(String::new());
    f.by_ref()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| {
            CliError::usage(format!(
                "cannot read the recovery key file {}: {e}",
                path.display()
            ))
        })?;
    Ok(RecoveryKey::parse(&text)?)
}

/// Shows a new recovery key: written to `out` (readable by its owner only), or printed.
pub fn deliver_recovery_key(key: &RecoveryKey, out: Option<&Path>) -> Result<String, CliError> {
    let text = key.to_text();
    match out {
        Some(path) => {
            write_private(path, format!("{}\n", text.as_str()).as_bytes())?;
            Ok(format!(
                "The recovery key is in {}: print it or copy it by hand, keep it in the safe, then delete the file.\n",
                path.display()
            ))
        }
        None => Ok(format!(
            "\nRECOVERY KEY (shown once; write it down and keep it in the safe):\n\n    {}\n\n\
             With it, `carnet --recovery-key-file FILE ...` opens the vault if every passphrase is lost.\n",
            text.as_str()
        )),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            CliError::failure(format!("cannot create {}: {e}", path.display()))
                .hint("choose a new file name")
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))
}

/// Fails unless `dir` holds a vault (checked without opening or locking anything).
fn require_vault(dir: &Path) -> Result<(), CliError> {
    if !SledStore::exists(dir) || !carnet_core::is_vault(&SledStore::documents(dir))? {
        return Err(not_a_vault(dir));
    }
    Ok(())
}

/// The store of the vault at `location`, opened if it holds a vault: a directory is reached
/// through the `carnet serve` that holds it, if one runs there, or else locked, waiting for
/// another carnet command that holds it for up to `--wait` seconds (and saying so); a database
/// is shared.
pub fn open_store(location: &Location, global: &Global) -> Result<AnyStore, CliError> {
    match location {
        Location::Dir(dir) => open_dir(dir, global),
        Location::Postgres(address) => Ok(AnyStore::Postgres(open_postgres(address)?)),
    }
}

/// [`open_store`] for `carnet serve`, which holds a directory itself (a second server on one
/// directory is "in use", never a relay's client).
pub fn open_store_to_serve(location: &Location, global: &Global) -> Result<AnyStore, CliError> {
    match location {
        Location::Dir(dir) => Ok(AnyStore::Sled(open_sled_waiting(dir, global)?)),
        Location::Postgres(address) => Ok(AnyStore::Postgres(open_postgres(address)?)),
    }
}

/// The vault in `dir`: through the running server's relay when one answers in it, else the
/// files themselves (and if a server took them while we waited, its relay after all).
fn open_dir(dir: &Path, global: &Global) -> Result<AnyStore, CliError> {
    require_vault(dir)?;
    if let Some(relay) = RelayStore::connect(dir)? {
        return Ok(AnyStore::Relay(relay));
    }
    match open_sled_waiting(dir, global) {
        Ok(sled) => Ok(AnyStore::Sled(sled)),
        Err(e) if e.exit == Exit::InUse => match RelayStore::connect(dir)? {
            Some(relay) => Ok(AnyStore::Relay(relay)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The PostgreSQL vault at `address`, if the database holds one.
fn open_postgres(address: &PgAddress) -> Result<PgStore, CliError> {
    let store = PgStore::open_at(address)?;
    if !carnet_core::is_vault(&store)? {
        return Err(CliError::failure(format!(
            "the vault {} holds no key files (it was never finished)",
            address.location()
        )));
    }
    Ok(store)
}

fn open_sled_waiting(dir: &Path, global: &Global) -> Result<SledStore, CliError> {
    require_vault(dir)?;
    let wait = std::time::Duration::from_secs(global.wait);
    let quiet = global.quiet;
    let mut waiting = || {
        if !quiet {
            eprintln!(
                "carnet: waiting for another carnet command to finish with this vault (up to {} s; --wait to change)…",
                global.wait
            );
        }
    };
    SledStore::open_waiting(dir, wait, &mut waiting).map_err(|e| match e {
        StoreError::Locked => CliError::new(
            Exit::InUse,
            format!(
                "the vault is in use by another process (waited {} s)",
                global.wait + 1
            ),
        )
        .hint("another carnet command (or `carnet serve`) still holds it: try again when it is done, or raise --wait"),
        other => other.into(),
    })
}

fn not_a_vault(dir: &Path) -> CliError {
    CliError::failure(format!("no vault at {}", dir.display()))
        .hint("run `carnet init` first, or pass --vault DIR|URI")
}
