//! The key store: the wrapped vault keys and patient keys, kept in the document `keys` outside
//! the record store, so that a rotation or an erasure can replace them whole without leaving old
//! wrapped keys in a log-structured store. Specified in docs/format.md, "Key store".

use std::collections::HashMap;

use carnet_storage::DocName;

use crate::error::{integrity, ProblemKind};
use crate::keys::WrappedKey;
use crate::records::{Blind, PatientKeyAt};
use crate::Error;

/// The keyring document (slots, current epoch).
pub(crate) const ROOT_DOC: DocName = DocName::new("root");
/// The key store document.
pub(crate) const KEYS_DOC: DocName = DocName::new("keys");

const MAGIC: [u8; 8] = *b"CARNETKS";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 8 + 2 + 16 + 4;
const TAG_VAULT_KEYS: u8 = 1;
const TAG_PATIENT_KEY: u8 = 2;
/// Candidates kept per place (see `KeyStore::earlier`).
const MAX_CANDIDATES: usize = 16;
/// Largest entry accepted (a wrapped key is about 100 bytes; the vault keys a few hundred).
const MAX_ENTRY: usize = 64 * 1024;

/// The parsed key store.
pub(crate) struct KeyStore {
    /// The master epoch every entry is wrapped under.
    pub(crate) epoch: u32,
    /// The sealed VaultKeys record.
    pub(crate) vault_keys: Option<WrappedKey>,
    /// Sealed PatientKey records by patient and key version. A later entry replaces an earlier
    /// one.
    pub(crate) patient: HashMap<PatientKeyAt, WrappedKey>,
    /// The earlier, different entries for a place that a later one replaced, oldest first: two
    /// processes registering one patient at once each append a key, and the one whose record
    /// won may be the earlier (the record tells which: see `Vault::load_patient`). Kept by a
    /// rewrite, before the chosen entry.
    pub(crate) earlier: HashMap<PatientKeyAt, Vec<WrappedKey>>,
    /// Whether the file ends with an incomplete entry (an append interrupted by a crash, never
    /// acknowledged). The next append first rewrites the file without it.
    pub(crate) torn: bool,
}

fn malformed(what: &str) -> Error {
    integrity("key store", ProblemKind::Malformed, what)
}

impl KeyStore {
    /// An empty key store for a new vault.
    pub(crate) fn new(epoch: u32) -> Self {
        KeyStore {
            epoch,
            vault_keys: None,
            patient: HashMap::new(),
            earlier: HashMap::new(),
            torn: false,
        }
    }

    /// Parses the key store of the vault `vault_id`.
    pub(crate) fn parse(bytes: &[u8], vault_id: &[u8; 16]) -> Result<Self, Error> {
        if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
            return Err(malformed("not a Carnet key store"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version > VERSION {
            return Err(Error::UnsupportedFormat {
                found: u32::from(version),
                supported: u32::from(VERSION),
            });
        }
        if version != VERSION || bytes[10..26] != vault_id[..] {
            return Err(malformed("belongs to another vault or is malformed"));
        }
        let epoch = u32::from_be_bytes([bytes[26], bytes[27], bytes[28], bytes[29]]);
        let mut ks = KeyStore::new(epoch);
        let mut rest = &bytes[HEADER_LEN..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                ks.torn = true;
                break;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len == 0 || len > MAX_ENTRY {
                return Err(malformed("entry of impossible length"));
            }
            if rest.len() < 4 + len {
                ks.torn = true;
                break;
            }
            let entry = &rest[4..4 + len];
            match entry[0] {
                TAG_VAULT_KEYS => ks.vault_keys = Some(WrappedKey::new(entry[1..].to_vec())),
                TAG_PATIENT_KEY if entry.len() > 37 => {
                    let blind =
                        Blind::from_slice(&entry[1..33]).ok_or_else(|| malformed("entry"))?;
                    let version = u32::from_be_bytes([entry[33], entry[34], entry[35], entry[36]]);
                    // The last entry for a place is chosen; the others stay candidates.
                    ks.choose(
                        PatientKeyAt { blind, version },
                        WrappedKey::new(entry[37..].to_vec()),
                    );
                }
                _ => return Err(malformed("unknown entry")),
            }
            rest = &rest[4 + len..];
        }
        Ok(ks)
    }

    /// The file header.
    pub(crate) fn header(vault_id: &[u8; 16], epoch: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_be_bytes());
        h.extend_from_slice(vault_id);
        h.extend_from_slice(&epoch.to_be_bytes());
        h
    }

    /// An entry holding the sealed vault keys.
    pub(crate) fn vault_keys_entry(sealed: &WrappedKey) -> Vec<u8> {
        entry(TAG_VAULT_KEYS, &[sealed.as_bytes()])
    }

    /// An entry holding one sealed patient key.
    pub(crate) fn patient_entry(at: &PatientKeyAt, sealed: &WrappedKey) -> Vec<u8> {
        entry(
            TAG_PATIENT_KEY,
            &[&at.blind.0, &at.version.to_be_bytes(), sealed.as_bytes()],
        )
    }

    /// Records `w` as an earlier candidate for `at` (once; never the chosen entry itself);
    /// returns whether it is new.
    pub(crate) fn add_earlier(&mut self, at: PatientKeyAt, w: WrappedKey) -> bool {
        if self.patient.get(&at).map(WrappedKey::as_bytes) == Some(w.as_bytes()) {
            return false;
        }
        let list = self.earlier.entry(at).or_default();
        // A few at most in honest use (processes registering one patient at the same moment);
        // bounded, so that entries planted by the storage host cost no more than a few.
        let new = list.len() < MAX_CANDIDATES && !list.iter().any(|e| e.as_bytes() == w.as_bytes());
        if new {
            list.push(w);
        }
        new
    }

    /// Makes `w` the chosen entry for `at` (the one that opened the patient's record); the one it
    /// replaces becomes an earlier candidate.
    pub(crate) fn choose(&mut self, at: PatientKeyAt, w: WrappedKey) {
        if let Some(list) = self.earlier.get_mut(&at) {
            list.retain(|e| e.as_bytes() != w.as_bytes());
        }
        if let Some(old) = self.patient.insert(at, w) {
            self.add_earlier(at, old);
        }
        if self.earlier.get(&at).is_some_and(Vec::is_empty) {
            self.earlier.remove(&at);
        }
    }

    /// Removes every entry for `at`.
    pub(crate) fn remove(&mut self, at: &PatientKeyAt) -> bool {
        self.earlier.remove(at);
        self.patient.remove(at).is_some()
    }

    /// The whole file, for a rewrite (entries in a stable order, repeats gone; a place's earlier
    /// candidates before its chosen entry, which a later entry being chosen keeps chosen).
    pub(crate) fn encode(&self, vault_id: &[u8; 16]) -> Vec<u8> {
        let mut out = Self::header(vault_id, self.epoch);
        if let Some(v) = &self.vault_keys {
            out.extend_from_slice(&Self::vault_keys_entry(v));
        }
        let mut keys: Vec<&PatientKeyAt> = self.patient.keys().collect();
        keys.sort();
        for k in keys {
            for e in self.earlier.get(k).into_iter().flatten() {
                out.extend_from_slice(&Self::patient_entry(k, e));
            }
            out.extend_from_slice(&Self::patient_entry(k, &self.patient[k]));
        }
        out
    }
}

fn entry(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut e = Vec::with_capacity(4 + len);
    // Entries are a few hundred bytes at most (sealed keys).
    e.extend_from_slice(&(len as u32).to_be_bytes());
    e.push(tag);
    for p in parts {
        e.extend_from_slice(p);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_torn_tail_and_foreign_vault() {
        let vid = [3u8; 16];
        let mut bytes = KeyStore::header(&vid, 7);
        let at = |b: u8| PatientKeyAt {
            blind: Blind([b; 32]),
            version: 1,
        };
        let wrapped = |s: &[u8]| WrappedKey::new(s.to_vec());
        bytes.extend(KeyStore::vault_keys_entry(&wrapped(b"vk")));
        bytes.extend(KeyStore::patient_entry(&at(1), &wrapped(b"old")));
        bytes.extend(KeyStore::patient_entry(&at(1), &wrapped(b"new")));
        let ks = KeyStore::parse(&bytes, &vid).unwrap();
        assert_eq!(ks.epoch, 7);
        assert_eq!(ks.patient[&at(1)].as_bytes(), b"new", "a later entry wins");
        assert!(!ks.torn);
        assert_eq!(
            ks.earlier[&at(1)][0].as_bytes(),
            b"old",
            "the earlier one a candidate"
        );
        let again = KeyStore::parse(&ks.encode(&vid), &vid).unwrap();
        assert_eq!(again.patient.len(), 1);
        assert_eq!(
            again.patient[&at(1)].as_bytes(),
            b"new",
            "a rewrite keeps the choice"
        );
        assert_eq!(again.earlier[&at(1)].len(), 1);
        // Choosing the candidate (it opened the record) survives a rewrite too.
        let mut chosen = KeyStore::parse(&ks.encode(&vid), &vid).unwrap();
        chosen.choose(at(1), wrapped(b"old"));
        let reread = KeyStore::parse(&chosen.encode(&vid), &vid).unwrap();
        assert_eq!(reread.patient[&at(1)].as_bytes(), b"old");
        assert_eq!(reread.earlier[&at(1)][0].as_bytes(), b"new");
        assert_eq!(
            again.vault_keys.as_ref().map(WrappedKey::as_bytes),
            Some(&b"vk"[..])
        );

        let mut torn = bytes.clone();
        torn.extend(&KeyStore::patient_entry(&at(2), &wrapped(b"xyz"))[..10]);
        let ks = KeyStore::parse(&torn, &vid).unwrap();
        assert!(ks.torn);
        assert_eq!(ks.patient.len(), 1);

        assert!(KeyStore::parse(&bytes, &[4u8; 16]).is_err());
        let mut future = bytes.clone();
        future[9] = 2;
        assert!(matches!(
            KeyStore::parse(&future, &vid),
            Err(Error::UnsupportedFormat { .. })
        ));
    }
}
