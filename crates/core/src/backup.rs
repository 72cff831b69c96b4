//! Backups: a self-verifying archive of a whole vault, independent of the storage engine.
//! Specified in docs/format.md, "Backup archive". It holds exactly the stored bytes (ciphertext
//! only), so making one needs no passphrase, and restoring one into any backend gives back the
//! same vault; it is also the migration path when the engine changes.

use std::io::{Read, Seek, SeekFrom, Write};

use carnet_storage::{Batch, DocName, Space, Store};
use sha2::{Digest, Sha256};

use crate::error::ProblemKind;
use crate::keystore::{KEYS_DOC, ROOT_DOC};
use crate::records::space;
use crate::Error;

const MAGIC: [u8; 8] = *b"CARNETBK";
const VERSION: u16 = 1;
const TAG_END: u8 = 0;
const TAG_DOC: u8 = 1;
const TAG_RECORD: u8 = 2;
/// Largest part accepted when reading (a record holds at most a 16 MiB note, padded).
const MAX_PART: u64 = 64 * 1024 * 1024;

/// The record spaces a backup holds, in order.
const SPACES: [Space; 5] = [
    space::META,
    space::PATIENTS,
    space::MANIFESTS,
    space::NOTES,
    space::LOG,
];

fn spaces() -> impl Iterator<Item = Space> {
    SPACES.into_iter()
}

fn space_named(name: &[u8]) -> Option<Space> {
    spaces().find(|s| s.name().as_bytes() == name)
}

fn doc_named(name: &[u8]) -> Option<DocName> {
    [ROOT_DOC, KEYS_DOC]
        .into_iter()
        .find(|d| d.name().as_bytes() == name)
}

/// What a backup or restore moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupSummary {
    /// Records (every space).
    pub records: u64,
    /// Documents (keyring and key store).
    pub documents: u64,
    /// Bytes of the archive.
    pub bytes: u64,
}

struct Writer<W: Write> {
    out: W,
    all: Sha256,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        self.all.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| {
            Error::Storage(carnet_storage::StoreError::io("cannot write the backup", e))
        })
    }

    /// One part: tag || name length || name || length || bytes || SHA-256 of all of those.
    fn part(&mut self, tag: u8, name: &[u8], body: &[&[u8]]) -> Result<(), Error> {
        let len: u64 = body.iter().map(|b| b.len() as u64).sum();
        let mut h = Sha256::new();
        let name_len = [name.len() as u8];
        for piece in [&[tag][..], &name_len, name, &len.to_be_bytes()] {
            h.update(piece);
            self.put(piece)?;
        }
        for b in body {
            h.update(b);
            self.put(b)?;
        }
        let digest: [u8; 32] = h.finalize().into();
        self.put(&digest)
    }
}

/// Writes an archive of everything in `store` to `out`. Run it while nothing else writes (the
/// sled backend's lock guarantees it for the command line). Needs no key.
pub fn write_backup<S: Store, W: Write>(store: &S, out: W) -> Result<BackupSummary, Error> {
    let root = store.read_doc(ROOT_DOC)?.ok_or(Error::NotAVault)?;
    let keys = store.read_doc(KEYS_DOC)?;
    // Only a vault's own documents go into an archive: a file put in their place (a link to a
    // passphrase file, anything else) is refused, not archived.
    let keyring = crate::keyring::Keyring::parse(&root).map_err(|_| {
        crate::error::integrity(
            "keyring",
            ProblemKind::Malformed,
            "not a Carnet keyring: nothing was archived",
        )
    })?;
    if let Some(k) = &keys {
        crate::keystore::KeyStore::parse(k, &keyring.vault_id)?;
    }
    let mut w = Writer {
        out,
        all: Sha256::new(),
        bytes: 0,
    };
    let mut summary = BackupSummary::default();
    w.put(&MAGIC)?;
    w.put(&VERSION.to_be_bytes())?;
    let mut parts = 0u64;
    for (doc, bytes) in [(ROOT_DOC, Some(root)), (KEYS_DOC, keys)] {
        if let Some(bytes) = bytes {
            w.part(TAG_DOC, doc.name().as_bytes(), &[&bytes])?;
            summary.documents += 1;
            parts += 1;
        }
    }
    for sp in spaces() {
        for r in store.scan_prefix(sp, &[]) {
            let (k, v) = r?;
            w.part(
                TAG_RECORD,
                sp.name().as_bytes(),
                &[&(k.len() as u32).to_be_bytes(), &k, &v],
            )?;
            summary.records += 1;
            parts += 1;
        }
    }
    // The end: the number of parts, then the SHA-256 of everything before it.
    w.put(&[TAG_END])?;
    w.put(&parts.to_be_bytes())?;
    let digest: [u8; 32] = w.all.clone().finalize().into();
    w.put(&digest)?;
    w.out.flush().map_err(|e| {
        Error::Storage(carnet_storage::StoreError::io("cannot write the backup", e))
    })?;
    summary.bytes = w.bytes;
    Ok(summary)
}

/// A damaged archive: truncated, failing a checksum, or not an archive at all.
fn damaged(why: &str) -> Error {
    crate::error::integrity("backup archive", ProblemKind::Malformed, why)
}

/// One part of an archive, as read.
enum Part {
    Doc(DocName, Vec<u8>),
    Record(Space, Vec<u8>, Vec<u8>),
}

/// Reads an archive part by part, in bounded memory (one part at a time, a part at most
/// [`MAX_PART`] bytes), checking each part's checksum, the count and the overall checksum.
struct Reader<R: Read> {
    input: R,
    all: Sha256,
    parts: u64,
    done: bool,
    /// Where the last part was, to hold parts to the order archives are written in (the
    /// keyring, then the key store, then each space in order, keys strictly ascending): no
    /// part twice, and at most two documents in memory.
    last: Option<(usize, Vec<u8>)>,
}

fn read_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        damaged("truncated")
    } else {
        Error::Storage(carnet_storage::StoreError::io("cannot read the backup", e))
    }
}

impl<R: Read> Reader<R> {
    /// Checks the header: a Carnet archive of a version this code reads.
    fn new(mut input: R) -> Result<Self, Error> {
        let mut header = [0u8; 10];
        input.read_exact(&mut header).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Foreign,
            _ => read_error(e),
        })?;
        if header[..8] != MAGIC {
            return Err(Error::Foreign);
        }
        let version = u16::from_be_bytes([header[8], header[9]]);
        if version > VERSION {
            return Err(Error::UnsupportedFormat {
                found: u32::from(version),
                supported: u32::from(VERSION),
            });
        }
        if version != VERSION {
            return Err(damaged("unknown archive version"));
        }
        let mut all = Sha256::new();
        all.update(header);
        Ok(Reader {
            input,
            all,
            parts: 0,
            done: false,
            last: None,
        })
    }

    /// Reads `n` bytes, counted in the overall checksum (and in `part`'s, if given).
    fn take(&mut self, n: usize, part: Option<&mut Sha256>) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        self.input.read_exact(&mut b).map_err(read_error)?;
        self.all.update(&b);
        if let Some(h) = part {
            h.update(&b);
        }
        Ok(b)
    }

    /// The next part, or `None` after the end (whose count and overall checksum matched).
    fn next_part(&mut self) -> Result<Option<Part>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut h = Sha256::new();
        let tag = self.take(1, Some(&mut h))?[0];
        if tag == TAG_END {
            let count = u64::from_be_bytes(
                self.take(8, None)?
                    .try_into()
                    .map_err(|_| damaged("truncated"))?,
            );
            let want: [u8; 32] = self.all.clone().finalize().into();
            let mut digest = [0u8; 32];
            self.input.read_exact(&mut digest).map_err(read_error)?;
            if count != self.parts {
                return Err(damaged(
                    "the number of parts does not match (parts missing or added)",
                ));
            }
            if digest != want {
                return Err(damaged("the overall checksum does not match"));
            }
            let mut rest = [0u8; 1];
            match self.input.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(damaged("bytes after the end")),
                Err(e) => return Err(read_error(e)),
            }
            self.done = true;
            return Ok(None);
        }
        let name_len = self.take(1, Some(&mut h))?[0] as usize;
        let name = self.take(name_len, Some(&mut h))?;
        let len = u64::from_be_bytes(
            self.take(8, Some(&mut h))?
                .try_into()
                .map_err(|_| damaged("truncated"))?,
        );
        if len > MAX_PART {
            return Err(damaged("a part is larger than any vault record"));
        }
        // `len` is at most MAX_PART (64 MiB): bounded.
        let body = self.take(len as usize, Some(&mut h))?;
        let checksum = self.take(32, None)?;
        let want: [u8; 32] = h.finalize().into();
        if checksum[..] != want {
            return Err(damaged(&format!("part {} fails its checksum", self.parts)));
        }
        let part = match tag {
            TAG_DOC => {
                let doc = doc_named(&name).ok_or_else(|| damaged("an unknown document"))?;
                // Documents come first: the keyring (0), then the key store (1), once each.
                let rank = usize::from(doc == KEYS_DOC);
                if self.last.as_ref().is_some_and(|(r, _)| *r >= rank) {
                    return Err(damaged("a document out of order or twice"));
                }
                self.last = Some((rank, Vec::new()));
                Part::Doc(doc, body)
            }
            TAG_RECORD => {
                let sp = space_named(&name).ok_or_else(|| damaged("an unknown record space"))?;
                let klen = u32::from_be_bytes(
                    body.get(..4)
                        .ok_or_else(|| damaged("record"))?
                        .try_into()
                        .map_err(|_| damaged("record"))?,
                ) as usize;
                let key = body
                    .get(4..4usize.saturating_add(klen))
                    .ok_or_else(|| damaged("record key"))?
                    .to_vec();
                let value = body[4 + klen..].to_vec();
                // Then the records, space by space, keys strictly ascending.
                let rank = 2 + SPACES.iter().position(|s| *s == sp).unwrap_or(0);
                let in_order = self.last.as_ref().is_none_or(|(r, k)| {
                    *r < rank || (*r == rank && k.as_slice() < key.as_slice())
                });
                if !in_order {
                    return Err(damaged("a record out of order or twice"));
                }
                self.last = Some((rank, key.clone()));
                Part::Record(sp, key, value)
            }
            _ => return Err(damaged("an unknown part")),
        };
        self.parts += 1;
        Ok(Some(part))
    }
}

/// Restores an archive into an empty `store`. The whole archive is read and checked first
/// (structure and order, every part's checksum, the count, the overall checksum), in bounded
/// memory; nothing is written before all of it passed. Then it is read again, checked again,
/// and written: the records, then the key store, and the keyring last, so an interrupted restore
/// leaves no vault that opens. If the archive changes between the two reads, the second fails
/// its checks and leaves records but no keyring: restore into a fresh store, as the command line
/// does, and drop it on error. Needs no key; run `verify` afterwards.
pub fn restore_backup<S: Store, R: Read + Seek>(
    mut input: R,
    store: &S,
) -> Result<BackupSummary, Error> {
    if store.read_doc(ROOT_DOC)?.is_some() {
        return Err(Error::AlreadyAVault);
    }
    let seek_error =
        |e| Error::Storage(carnet_storage::StoreError::io("cannot read the backup", e));
    let start = input.stream_position().map_err(seek_error)?;
    // Pass 1: check everything; keep nothing.
    let mut check = Reader::new(std::io::BufReader::new(&mut input))?;
    let mut keyring = false;
    while let Some(part) = check.next_part()? {
        keyring |= matches!(part, Part::Doc(d, _) if d == ROOT_DOC);
    }
    drop(check);
    if !keyring {
        return Err(damaged("no keyring"));
    }
    // Pass 2: write.
    input.seek(SeekFrom::Start(start)).map_err(seek_error)?;
    let mut read = Reader::new(std::io::BufReader::new(&mut input))?;
    let mut summary = BackupSummary::default();
    let mut docs = Vec::new();
    let mut batch = Batch::new();
    let mut pending = 0usize;
    while let Some(part) = read.next_part()? {
        match part {
            Part::Doc(d, bytes) => docs.push((d, bytes)),
            Part::Record(sp, k, v) => {
                pending += k.len() + v.len();
                batch.put(sp, k, v);
                summary.records += 1;
                if pending > 8 << 20 {
                    store.commit(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
        }
    }
    if !docs.iter().any(|(d, _)| *d == ROOT_DOC) {
        return Err(damaged("no keyring"));
    }
    store.commit(batch)?;
    store.flush()?;
    docs.sort_by_key(|(d, _)| *d == ROOT_DOC);
    for (d, bytes) in docs {
        store.replace_doc(d, &bytes)?;
        summary.documents += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carnet_storage::MemStore;

    /// A store holding a real (small) vault and one extra record.
    fn vault_store() -> std::sync::Arc<MemStore> {
        let s = std::sync::Arc::new(MemStore::new());
        let pass = crate::Passphrase::new("a passphrase for the backup test".into());
        let kdf = crate::KdfParams::new(8, 1, 1).unwrap();
        drop(crate::Vault::create(s.clone(), "admin", &pass, kdf).unwrap());
        let mut b = Batch::new();
        b.put(space::NOTES, b"k1".to_vec(), b"v1".to_vec());
        s.commit(b).unwrap();
        s
    }

    #[test]
    fn only_a_vaults_own_documents_are_archived() {
        let s = vault_store();
        let mut out = Vec::new();
        write_backup(&*s, &mut out).unwrap();
        for (doc, junk) in [
            (ROOT_DOC, &b"a passphrase file"[..]),
            (KEYS_DOC, b"ssh key"),
        ] {
            let s = vault_store();
            s.replace_doc(doc, junk).unwrap();
            let mut out = Vec::new();
            assert!(
                matches!(write_backup(&*s, &mut out), Err(Error::Integrity(_))),
                "{}",
                doc.name()
            );
            assert!(
                !out.windows(junk.len()).any(|w| w == junk),
                "nothing archived"
            );
        }
    }

    /// A well-checksummed archive of `parts` (tag, name, body), as an attacker would build one.
    fn crafted(parts: &[(u8, &[u8], Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer {
            out: &mut out,
            all: Sha256::new(),
            bytes: 0,
        };
        w.put(&MAGIC).unwrap();
        w.put(&VERSION.to_be_bytes()).unwrap();
        for (tag, name, body) in parts {
            w.part(*tag, name, &[body]).unwrap();
        }
        w.put(&[TAG_END]).unwrap();
        w.put(&(parts.len() as u64).to_be_bytes()).unwrap();
        let digest: [u8; 32] = w.all.clone().finalize().into();
        w.put(&digest).unwrap();
        out
    }

    #[test]
    fn parts_out_of_order_or_twice_are_refused() {
        let s = vault_store();
        let root = s.read_doc(ROOT_DOC).unwrap().unwrap();
        let keys = s.read_doc(KEYS_DOC).unwrap().unwrap();
        let record = |k: &[u8]| [&(k.len() as u32).to_be_bytes()[..], k, b"v"].concat();
        let docs = || {
            vec![
                (TAG_DOC, &b"root"[..], root.clone()),
                (TAG_DOC, &b"keys"[..], keys.clone()),
            ]
        };
        let ok = [docs(), vec![(TAG_RECORD, &b"notes"[..], record(b"a"))]].concat();
        restore_backup(std::io::Cursor::new(crafted(&ok)), &MemStore::new()).unwrap();
        for (what, parts) in [
            (
                "the key store twice (a big document repeated)",
                [docs(), vec![(TAG_DOC, &b"keys"[..], keys.clone())]].concat(),
            ),
            (
                "a record twice",
                [
                    docs(),
                    vec![
                        (TAG_RECORD, &b"notes"[..], record(b"a")),
                        (TAG_RECORD, &b"notes"[..], record(b"a")),
                    ],
                ]
                .concat(),
            ),
            (
                "keys out of order",
                [
                    docs(),
                    vec![
                        (TAG_RECORD, &b"notes"[..], record(b"b")),
                        (TAG_RECORD, &b"notes"[..], record(b"a")),
                    ],
                ]
                .concat(),
            ),
            (
                "spaces out of order",
                [
                    docs(),
                    vec![
                        (TAG_RECORD, &b"notes"[..], record(b"a")),
                        (TAG_RECORD, &b"meta"[..], record(b"a")),
                    ],
                ]
                .concat(),
            ),
            (
                "a document after the records",
                [
                    vec![(TAG_DOC, &b"root"[..], root.clone())],
                    vec![(TAG_RECORD, &b"notes"[..], record(b"a"))],
                    vec![(TAG_DOC, &b"keys"[..], keys.clone())],
                ]
                .concat(),
            ),
        ] {
            let to = MemStore::new();
            match restore_backup(std::io::Cursor::new(crafted(&parts)), &to) {
                Err(Error::Integrity(e)) => assert!(e.problem().contains("order"), "{what}: {e}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(to.read_doc(ROOT_DOC).unwrap().is_none(), "{what}");
        }
    }

    #[test]
    fn any_damage_is_refused_before_anything_is_written() {
        let s = vault_store();
        let records: u64 = SPACES
            .iter()
            .map(|sp| s.scan_prefix(*sp, &[]).count() as u64)
            .sum();
        let mut archive = Vec::new();
        let sum = write_backup(&*s, &mut archive).unwrap();
        assert_eq!((sum.records, sum.documents), (records, 2));
        let to = MemStore::new();
        restore_backup(std::io::Cursor::new(&archive[..]), &to).unwrap();
        assert_eq!(
            to.get(space::NOTES, b"k1").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(
            to.read_doc(ROOT_DOC).unwrap(),
            s.read_doc(ROOT_DOC).unwrap()
        );
        assert!(matches!(
            restore_backup(std::io::Cursor::new(&archive[..]), &to),
            Err(Error::AlreadyAVault)
        ));
        for i in 0..archive.len() {
            let mut bad = archive.clone();
            bad[i] ^= 0x10;
            let to = MemStore::new();
            assert!(
                restore_backup(std::io::Cursor::new(&bad[..]), &to).is_err(),
                "byte {i}"
            );
            assert!(
                to.read_doc(ROOT_DOC).unwrap().is_none()
                    && to.scan_prefix(space::NOTES, &[]).next().is_none()
            );
        }
        // A part claiming more bytes than any record is refused before anything is read.
        let mut huge = archive[..10].to_vec();
        huge.extend_from_slice(&[TAG_DOC, 4]);
        huge.extend_from_slice(b"root");
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        match restore_backup(std::io::Cursor::new(&huge[..]), &MemStore::new()) {
            Err(Error::Integrity(e)) => assert!(e.problem().contains("larger"), "{e}"),
            other => panic!("an oversized part: {other:?}"),
        }
        for cut in [0, 9, 10, archive.len() / 2, archive.len() - 1] {
            assert!(
                restore_backup(std::io::Cursor::new(&archive[..cut]), &MemStore::new()).is_err(),
                "cut at {cut}"
            );
        }
    }
}
