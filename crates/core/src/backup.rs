//! Backups: a self-verifying archive of a whole vault, independent of the storage engine.
//! Specified in docs/format.md, "Backup archive". It holds exactly the stored bytes (ciphertext
//! only), so making one needs no passphrase, and restoring one into any backend gives back the
//! same vault; it is also the migration path when the engine changes.

use std::io::{Read, Write};

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
    let mut w = Writer {
        out,
        all: Sha256::new(),
        bytes: 0,
    };
    let mut summary = BackupSummary::default();
    w.put(&MAGIC)?;
    w.put(&VERSION.to_be_bytes())?;
    let mut parts = 0u64;
    for (doc, bytes) in [
        (ROOT_DOC, Some(root)),
        (KEYS_DOC, store.read_doc(KEYS_DOC)?),
    ] {
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

/// A parsed, fully checked archive.
struct Parsed {
    docs: Vec<(DocName, Vec<u8>)>,
    records: Vec<(Space, Vec<u8>, Vec<u8>)>,
}

/// Reads and checks a whole archive: structure, every part's checksum, the count, the overall
/// checksum. Nothing is written before all of it passed.
fn parse(mut input: impl Read) -> Result<Parsed, Error> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Storage(carnet_storage::StoreError::io("cannot read the backup", e)))?;
    if bytes.len() < 10 || bytes[..8] != MAGIC {
        return Err(Error::Foreign);
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version > VERSION {
        return Err(Error::UnsupportedFormat {
            found: u32::from(version),
            supported: u32::from(VERSION),
        });
    }
    let mut at = 10usize;
    let mut out = Parsed {
        docs: Vec::new(),
        records: Vec::new(),
    };
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, Error> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| damaged("truncated"))?;
        let r = *at..end;
        *at = end;
        Ok(r)
    };
    let mut parts = 0u64;
    loop {
        let start = at;
        let tag = bytes[take(&mut at, 1)?][0];
        if tag == TAG_END {
            let count = u64::from_be_bytes(
                bytes[take(&mut at, 8)?]
                    .try_into()
                    .map_err(|_| damaged("truncated"))?,
            );
            let body_end = at;
            let digest = take(&mut at, 32)?;
            if count != parts {
                return Err(damaged(
                    "the number of parts does not match (parts missing or added)",
                ));
            }
            let want: [u8; 32] = Sha256::digest(&bytes[..body_end]).into();
            if bytes[digest] != want {
                return Err(damaged("the overall checksum does not match"));
            }
            if at != bytes.len() {
                return Err(damaged("bytes after the end"));
            }
            break;
        }
        let name_len = bytes[take(&mut at, 1)?][0] as usize;
        let name = take(&mut at, name_len)?;
        let len = u64::from_be_bytes(
            bytes[take(&mut at, 8)?]
                .try_into()
                .map_err(|_| damaged("truncated"))?,
        );
        if len > MAX_PART {
            return Err(damaged("a part is larger than any vault record"));
        }
        let body = take(&mut at, len as usize)?;
        let checksum = take(&mut at, 32)?;
        let want: [u8; 32] = Sha256::digest(&bytes[start..body.end]).into();
        if bytes[checksum] != want {
            return Err(damaged(&format!("part {parts} fails its checksum")));
        }
        let name = &bytes[name];
        let body = &bytes[body];
        match tag {
            TAG_DOC => {
                let doc = doc_named(name).ok_or_else(|| damaged("an unknown document"))?;
                out.docs.push((doc, body.to_vec()));
            }
            TAG_RECORD => {
                let sp = space_named(name).ok_or_else(|| damaged("an unknown record space"))?;
                let klen = u32::from_be_bytes(
                    body.get(..4)
                        .ok_or_else(|| damaged("record"))?
                        .try_into()
                        .map_err(|_| damaged("record"))?,
                ) as usize;
                let key = body.get(4..4 + klen).ok_or_else(|| damaged("record key"))?;
                out.records
                    .push((sp, key.to_vec(), body[4 + klen..].to_vec()));
            }
            _ => return Err(damaged("an unknown part")),
        }
        parts += 1;
    }
    if !out.docs.iter().any(|(d, _)| *d == ROOT_DOC) {
        return Err(damaged("no keyring"));
    }
    Ok(out)
}

/// Restores an archive into an empty `store`. The whole archive is checked first; then the
/// records are written, then the key store, and the keyring last, so an interrupted restore
/// leaves no vault that opens. Needs no key; run `verify` afterwards.
pub fn restore_backup<S: Store, R: Read>(input: R, store: &S) -> Result<BackupSummary, Error> {
    if store.read_doc(ROOT_DOC)?.is_some() {
        return Err(Error::AlreadyAVault);
    }
    let parsed = parse(input)?;
    let mut summary = BackupSummary::default();
    let mut batch = Batch::new();
    let mut pending = 0usize;
    for (sp, k, v) in parsed.records {
        pending += k.len() + v.len();
        batch.put(sp, k, v);
        summary.records += 1;
        if pending > 8 << 20 {
            store.commit(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    store.commit(batch)?;
    store.flush()?;
    let mut docs = parsed.docs;
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

    #[test]
    fn any_damage_is_refused_before_anything_is_written() {
        let s = MemStore::new();
        s.replace_doc(ROOT_DOC, b"keyring").unwrap();
        s.replace_doc(KEYS_DOC, b"keys").unwrap();
        let mut b = Batch::new();
        b.put(space::NOTES, b"k1".to_vec(), b"v1".to_vec());
        b.put(space::META, b"m".to_vec(), b"v2".to_vec());
        s.commit(b).unwrap();
        let mut archive = Vec::new();
        let sum = write_backup(&s, &mut archive).unwrap();
        assert_eq!((sum.records, sum.documents), (2, 2));
        let to = MemStore::new();
        restore_backup(&archive[..], &to).unwrap();
        assert_eq!(
            to.get(space::NOTES, b"k1").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(
            to.read_doc(ROOT_DOC).unwrap().as_deref(),
            Some(&b"keyring"[..])
        );
        assert!(matches!(
            restore_backup(&archive[..], &to),
            Err(Error::AlreadyAVault)
        ));
        for i in 0..archive.len() {
            let mut bad = archive.clone();
            bad[i] ^= 0x10;
            let to = MemStore::new();
            assert!(restore_backup(&bad[..], &to).is_err(), "byte {i}");
            assert!(
                to.read_doc(ROOT_DOC).unwrap().is_none()
                    && to.scan_prefix(space::NOTES, &[]).next().is_none()
            );
        }
        for cut in [0, 9, 10, archive.len() / 2, archive.len() - 1] {
            assert!(
                restore_backup(&archive[..cut], &MemStore::new()).is_err(),
                "cut at {cut}"
            );
        }
    }
}
