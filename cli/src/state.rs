//! What this machine remembers of each vault it works on: the newest durable head of the
//! vault's access log, per vault and location, in a state directory outside the vault
//! (`CARNET_STATE_DIR`, else `$XDG_STATE_HOME/carnet`, else `~/.local/state/carnet`). At the next
//! unlock the vault's log must extend it (`Vault::check_extends`), so that a vault put back to
//! an older copy, or truncated, behind this machine's back is refused (docs/threat-model.md,
//! "An attacker who can write the storage").
//!
//! Written only after the head is durable, never moved backwards (but by `audit
//! accept-rewind`), and replaced atomically under a lock, so that two processes updating it at
//! once keep the newer head. A state directory that is damaged or cannot be written is a
//! warning, never a failure.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use carnet_core::Checkpoint;
use carnet_storage::Location;
use sha2::{Digest, Sha256};

/// The state directory: `CARNET_STATE_DIR`, else `$XDG_STATE_HOME/carnet`, else
/// `~/.local/state/carnet`; `None` when none can be named.
pub fn state_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("CARNET_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return Some(PathBuf::from(x).join("carnet"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/state/carnet"))
}

/// What a state file says besides the head: the vault's format as last seen, and the slots
/// seen re-protected (format 2), by tag.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub struct Seen {
    /// The highest format this machine saw the vault in (1 when not said: files written
    /// before format 2).
    pub format: u16,
    /// Per slot (by the tag of its user, or of the recovery key), the highest keyring-key
    /// version this machine saw it hold: a slot holding an older one (or a legacy slot) is an
    /// older copy put back, which would reopen master-key injection.
    pub keyed: std::collections::BTreeMap<String, u32>,
}

impl Seen {
    /// This and `other` together: the higher format, every slot.
    fn merged(&self, other: &Seen) -> Seen {
        Seen {
            format: self.format.max(other.format),
            keyed: {
                let mut k = self.keyed.clone();
                for (t, v) in &other.keyed {
                    let e = k.entry(t.clone()).or_insert(*v);
                    *e = (*e).max(*v);
                }
                k
            },
        }
    }
}

/// The tag of `user`'s slot of the vault `id` in a state file: a hash, so that the file names
/// no user.
pub fn slot_tag(id: &[u8; 16], user: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"carnet/v2/state/slot");
    h.update(id);
    h.update(user.as_bytes());
    hex(&h.finalize()[..16])
}

/// What this machine remembers of one vault at one location.
pub struct Memory {
    dir: PathBuf,
    name: String,
    id: [u8; 16],
    location: PathBuf,
}

/// `path` made absolute and lexically normal (`.` and `..` folded), without resolving links:
/// the location is the path the user names, so a link swapped in its place (an older copy
/// behind `vault -> vault.old`) is still the same location.
fn location_of(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Refuses a state directory that others could change (writable by its group or others, or
/// owned by another user): what it says could not be trusted.
fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        fs::symlink_metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.mode() & 0o022 != 0 || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!(
            "{} can be changed by other users (it must be yours, and not writable by others)",
            dir.display()
        ));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Memory {
    /// Where this machine remembers the vault `id` at `location`: a directory (made
    /// absolute), or a PostgreSQL vault (by its server, database and name).
    pub fn of(id: [u8; 16], location: &Location) -> Option<Memory> {
        let dir = state_dir()?;
        Some(match location {
            Location::Dir(d) => Self::at(dir, id, d),
            Location::Postgres(a) => Self::named(dir, id, PathBuf::from(a.location())),
        })
    }

    /// [`Memory::of`] a directory, in the state directory `dir`.
    fn at(dir: PathBuf, id: [u8; 16], location: &Path) -> Memory {
        Self::named(dir, id, location_of(location))
    }

    fn named(dir: PathBuf, id: [u8; 16], location: PathBuf) -> Memory {
        let mut h = Sha256::new();
        h.update(b"carnet/v1/state");
        h.update(id);
        h.update(location.as_os_str().as_encoded_bytes());
        Memory {
            dir,
            // The vault's id first: every location of one vault can be found.
            name: format!("{}-{}", hex(&id), hex(&h.finalize()[..16])),
            id,
            location,
        }
    }

    /// What this machine remembers of the same vault at its other locations: (location, head).
    pub fn elsewhere(&self) -> Vec<(String, Checkpoint)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let prefix = format!("{}-", hex(&self.id));
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && !n.contains('.') && *n != self.name)
            .filter_map(|n| {
                let text = fs::read_to_string(self.dir.join(&n)).ok()?;
                let head = Checkpoint::parse(text.lines().next()?).ok()?;
                let at = text
                    .lines()
                    .find_map(|l| l.strip_prefix("location "))
                    .unwrap_or("?")
                    .to_string();
                Some((at, head))
            })
            .collect()
    }

    fn file(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The state file, for messages.
    pub fn path(&self) -> PathBuf {
        self.file()
    }

    /// The head remembered: `None` if this machine never saw the vault at this location; an
    /// error (to warn about) if the state cannot be read.
    pub fn seen(&self) -> Result<Option<Checkpoint>, String> {
        match check_private_dir(&self.dir) {
            Ok(()) => {}
            Err(_) if !self.dir.exists() => return Ok(None),
            Err(why) => return Err(why),
        }
        let text = match fs::read_to_string(self.file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.file().display())),
        };
        let line = text.lines().next().unwrap_or("");
        Checkpoint::parse(line)
            .map(Some)
            .map_err(|_| format!("{} is damaged", self.file().display()))
    }

    /// The format and slots remembered (empty when nothing, or nothing readable, is).
    pub fn seen_more(&self) -> Seen {
        let text = fs::read_to_string(self.file()).unwrap_or_default();
        let mut seen = Seen {
            format: 1,
            ..Seen::default()
        };
        for line in text.lines() {
            if let Some(f) = line.strip_prefix("format ") {
                seen.format = f.trim().parse().unwrap_or(1);
            } else if let Some(t) = line.strip_prefix("keyed ") {
                let mut parts = t.split_whitespace();
                if let (Some(tag), Some(v)) =
                    (parts.next(), parts.next().and_then(|v| v.parse().ok()))
                {
                    seen.keyed.insert(tag.to_string(), v);
                }
            }
        }
        seen
    }

    /// Remembers `head` unless what is remembered is newer (another process went further),
    /// and `more` with what was remembered (never less: a format or a slot once seen stays).
    pub fn remember(&self, head: &Checkpoint, more: &Seen) -> Result<(), String> {
        self.update(|seen| seen.is_none_or(|s| head.count > s.count), head, more)
    }

    /// Remembers `head` whatever was remembered: a deliberate return to an older state. What
    /// is remembered of the format and slots stays.
    pub fn replace(&self, head: &Checkpoint) -> Result<(), String> {
        self.update(|_| true, head, &Seen::default())
    }

    /// Forgets the vault at this location: the next unlock accepts it as it finds it.
    pub fn forget(&self) -> Result<(), String> {
        let _lock = self.lock()?;
        match fs::remove_file(self.file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", self.file().display())),
        }
    }

    /// Holds this vault's lock in the state directory (created private if need be).
    fn lock(&self) -> Result<File, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        check_private_dir(&self.dir)?;
        let path = self.dir.join(format!("{}.lock", self.name));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        f.lock()
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(f)
    }

    /// Under the lock: writes `head` if `wanted(what is remembered)`, atomically.
    fn update(
        &self,
        wanted: impl FnOnce(Option<Checkpoint>) -> bool,
        head: &Checkpoint,
        more: &Seen,
    ) -> Result<(), String> {
        let _lock = self.lock()?;
        // A damaged state is replaced: it says nothing.
        let before = self.seen().unwrap_or(None);
        let had = self.seen_more();
        let more = had.merged(more);
        let head = match before {
            Some(b) if !wanted(Some(b)) => {
                if more == had {
                    return Ok(());
                }
                // Only the format or the slots grew: the newer head stays.
                b
            }
            _ => *head,
        };
        let head = &head;
        let tmp = self.dir.join(format!("{}.tmp", self.name));
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_file(&tmp).map_err(|e| format!("cannot remove {}: {e}", tmp.display()))?;
        }
        let mut text = format!(
            "{}\nvault {}\nlocation {}\nformat {}\n",
            head.to_line(),
            hex(&self.id),
            self.location.display(),
            more.format.max(1)
        );
        for (t, v) in &more.keyed {
            text.push_str(&format!("keyed {t} {v}\n"));
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, self.file())?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.file().display()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn head(count: u64, b: u8) -> Checkpoint {
        Checkpoint::parse(&format!(
            "carnet-log-checkpoint v1 {count} {}",
            format!("{b:02x}").repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn the_memory_never_moves_backwards_but_on_purpose() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Memory::at(tmp.path().join("state"), [1; 16], tmp.path());
        assert_eq!(m.seen().unwrap(), None, "never seen");
        m.remember(&head(5, 0xaa), &Seen::default()).unwrap();
        m.remember(&head(3, 0xbb), &Seen::default()).unwrap();
        assert_eq!(
            m.seen().unwrap(),
            Some(head(5, 0xaa)),
            "an older head is not remembered"
        );
        m.remember(&head(9, 0xcc), &Seen::default()).unwrap();
        assert_eq!(m.seen().unwrap(), Some(head(9, 0xcc)));
        m.replace(&head(2, 0xdd)).unwrap();
        assert_eq!(
            m.seen().unwrap(),
            Some(head(2, 0xdd)),
            "a deliberate rewind"
        );
        // Another vault, or the same vault at another place, is remembered apart.
        let other = Memory::at(tmp.path().join("state"), [2; 16], tmp.path());
        assert_eq!(other.seen().unwrap(), None);
        let elsewhere = Memory::at(tmp.path().join("state"), [1; 16], Path::new("/elsewhere"));
        assert_eq!(elsewhere.seen().unwrap(), None);
        m.forget().unwrap();
        assert_eq!(m.seen().unwrap(), None);
        // A damaged state says so, and is replaced by the next head.
        m.remember(&head(1, 0xee), &Seen::default()).unwrap();
        std::fs::write(m.path(), "garbage").unwrap();
        assert!(m.seen().is_err());
        m.remember(&head(1, 0xee), &Seen::default()).unwrap();
        assert_eq!(m.seen().unwrap(), Some(head(1, 0xee)));
    }

    #[test]
    fn two_processes_remembering_at_once_keep_the_newer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let dir = dir.clone();
                s.spawn(move || {
                    let m = Memory::at(dir, [1; 16], Path::new("/v"));
                    for i in 0..25 {
                        m.remember(&head(i * 4 + t, t as u8), &Seen::default())
                            .unwrap();
                    }
                });
            }
        });
        let m = Memory::at(dir, [1; 16], Path::new("/v"));
        assert_eq!(m.seen().unwrap().unwrap().count, 99);
    }

    #[test]
    fn a_format_or_a_slot_once_seen_is_never_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::at(dir.path().join("state"), [3; 16], Path::new("/v"));
        let mut more = Seen {
            format: 2,
            ..Seen::default()
        };
        more.keyed.insert(slot_tag(&[3; 16], "bob"), 2);
        m.remember(&head(5, 0xaa), &more).unwrap();
        // An older head with nothing more to say changes nothing; a newer one keeps the rest.
        m.remember(&head(3, 0xbb), &Seen::default()).unwrap();
        m.remember(&head(9, 0xcc), &Seen::default()).unwrap();
        assert_eq!(m.seen().unwrap().unwrap().count, 9);
        assert_eq!(m.seen_more(), more);
        // An older head that adds a slot keeps the newer head and adds the slot.
        let mut carol = Seen::default();
        carol.keyed.insert(slot_tag(&[3; 16], "carol"), 1);
        // A lower version for bob changes nothing of his.
        carol.keyed.insert(slot_tag(&[3; 16], "bob"), 1);
        m.remember(&head(4, 0xdd), &carol).unwrap();
        assert_eq!(m.seen().unwrap().unwrap().count, 9);
        assert_eq!(m.seen_more().keyed.len(), 2);
        assert_eq!(m.seen_more().keyed[&slot_tag(&[3; 16], "bob")], 2);
        // A deliberate rewind keeps them too.
        m.replace(&head(2, 0xee)).unwrap();
        assert_eq!(m.seen().unwrap().unwrap().count, 2);
        assert_eq!(m.seen_more().format, 2);
        assert_eq!(m.seen_more().keyed.len(), 2);
    }
}
