//! Opening a patient's note versions, and checking them against the patient's manifest: the
//! note chain of docs/format.md, "Chains".

use std::collections::HashMap;

use carnet_storage::Store;

use super::patients::{manifest_location, PatientState};
use super::Vault;
use crate::envelope::{malformed_payload, parse_error, Sealed, FORMAT_1, FORMAT_2};
use crate::error::{integrity, IntegrityError, ProblemKind};
use crate::frame;
use crate::model::{Note, NoteBody, NoteId, Timestamp};
use crate::records::{note_link, space, NoteAt, NoteMetaV1, NoteMetaV2};
use crate::sealing::NoteRecord;
use crate::Error;

/// From this many note versions on, one patient's notes are decrypted on every core.
const PARALLEL_NOTES: usize = 64;

/// One decoded note version.
pub(super) struct Decoded {
    pub(super) note: [u8; 16],
    pub(super) version: u32,
    pub(super) meta: NoteMetaV1,
    /// Format 2: the user who wrote this version, and whether with the recovery key.
    pub(super) written_by: Option<(String, bool)>,
    pub(super) bytes: u64,
    pub(super) body: Option<NoteBody>,
}

/// The outcome of decrypting all of a patient's notes.
pub(super) struct Scan {
    pub(super) decoded: Vec<Decoded>,
    pub(super) problems: Vec<IntegrityError>,
    pub(super) stored: u64,
}

/// Which bodies a scan of a patient's notes keeps.
#[derive(Clone, Copy)]
pub(super) enum Bodies {
    None,
    All,
    Current,
    Of([u8; 16]),
}

/// One stored record: storage key and value.
pub(super) type RawEntry = (Vec<u8>, Vec<u8>);

impl<S: Store> Vault<S> {
    /// Opens one stored note version of `st`'s patient, keeping its body if `keep`.
    pub(super) fn open_note(
        &self,
        st: &PatientState,
        key: &[u8],
        stored: &[u8],
        keep: bool,
    ) -> Result<Decoded, Error> {
        let at = NoteAt::parse(key)
            .filter(|at| at.blind == st.blind)
            .ok_or_else(|| {
                integrity(
                    format!("note under {}", st.blind.short()),
                    ProblemKind::Malformed,
                    "malformed storage key",
                )
            })?;
        // `at` names the record only when something is wrong: formatting it for every note
        // costs more than its decryption's bookkeeping.
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(&at.to_string(), e))?;
        // Between the steps of a patient-key rotation, notes may be sealed under the next (or
        // the previous) key version; any version still in the key store opens them.
        // Opened and decoded once: the metadata and the body come from the same frame.
        let plain = if sealed.key_version == st.keys.version() {
            sealed.open_at::<NoteRecord>(at, &st.keys.note, self.vault_id(), &at)?
        } else {
            self.patient_keys_opening(&at.blind, sealed.key_version, &|k| {
                sealed.open_at::<NoteRecord>(at, &k.note, self.vault_id(), &at)
            })?
            .1
        };
        let (meta, written_by, body) = if sealed.format == FORMAT_1 {
            let (meta, body) = frame::decode::<NoteMetaV1>(&plain)
                .ok_or_else(|| malformed_payload(at.to_string()))?;
            (meta, None, body)
        } else if sealed.format == FORMAT_2 {
            let (m, body) = frame::decode::<NoteMetaV2>(&plain)
                .ok_or_else(|| malformed_payload(at.to_string()))?;
            let meta = NoteMetaV1 {
                seq: m.seq,
                created_at: m.created_at,
                updated_at: m.updated_at,
                author: m.author.clone(),
                kind: m.kind.clone(),
            };
            (meta, Some((m.written_by.clone(), m.via_recovery_key)), body)
        } else {
            // Only patient records have a third payload format.
            return Err(malformed_payload(at.to_string()));
        };
        Ok(Decoded {
            note: at.note,
            version: at.version,
            meta,
            written_by,
            bytes: body.len() as u64,
            body: if keep {
                Some(NoteBody::new(body.to_vec())?)
            } else {
                None
            },
        })
    }

    /// Decrypts every note version of a patient and checks them against the manifest's chain.
    /// Returns the decoded versions (in storage order) and every problem found.
    pub(super) fn scan_notes(&self, st: &PatientState, bodies: Bodies) -> Result<Scan, Error> {
        let raw: Vec<RawEntry> = self
            .store
            .scan_prefix(space::NOTES, &st.blind.0)
            .collect::<Result<_, _>>()?;
        self.check_notes(st, &raw, bodies)
    }

    /// [`Vault::scan_notes`] over entries already read: every stored version of one patient's
    /// notes (storage key, stored bytes), in storage order.
    pub(super) fn check_notes(
        &self,
        st: &PatientState,
        raw: &[RawEntry],
        bodies: Bodies,
    ) -> Result<Scan, Error> {
        let open = |i: usize| {
            let (k, v) = &raw[i];
            let keep = match bodies {
                Bodies::None => false,
                Bodies::All => true,
                // Keys sort by (note id, version): the last of a note's run is its current version.
                Bodies::Current => raw
                    .get(i + 1)
                    .is_none_or(|(next, _)| next.get(32..48) != k.get(32..48)),
                Bodies::Of(n) => k.get(32..48) == Some(&n[..]),
            };
            self.open_note(st, k, v, keep)
        };
        // A large chart read on its own (not inside verify's or search's workers, which
        // already use every core) is decrypted on every core too, in equal slices.
        let opened: Vec<Result<Decoded, Error>> =
            if raw.len() >= PARALLEL_NOTES && !crate::par::in_worker() {
                crate::par::map_indices(raw.len(), open)
            } else {
                (0..raw.len()).map(open).collect()
            };
        let mut out = Vec::with_capacity(raw.len());
        let mut problems = Vec::new();
        for r in opened {
            match r {
                Ok(d) => out.push(d),
                Err(Error::Integrity(e)) => problems.push(e),
                Err(e) => return Err(e),
            }
        }
        problems.extend(check_chain(st, &out, raw.len()));
        Ok(Scan {
            decoded: out,
            problems,
            stored: raw.len() as u64,
        })
    }
}

/// Checks a patient's decoded note versions against its manifest: positions 0..next_seq each
/// exactly once, the recomputed chain head equal to the manifest's, versions of each note
/// numbered 1, 2, ... without gaps, and the note count.
pub(super) fn check_chain(
    st: &PatientState,
    decoded: &[Decoded],
    stored: usize,
) -> Vec<IntegrityError> {
    let location = manifest_location(&st.blind);
    let m = &st.manifest;
    let mut problems = Vec::new();
    if stored as u64 != m.next_seq {
        problems.push(IntegrityError::new(
            &location,
            ProblemKind::Inconsistent,
            format!(
                "lists {} note versions but {} are stored (a record was removed, added or replaced)",
                m.next_seq, stored
            ),
        ));
    }
    if decoded.len() != stored {
        // Some records failed to open: already reported; the chain cannot be recomputed.
        return problems;
    }
    let mut order: Vec<&Decoded> = decoded.iter().collect();
    order.sort_by_key(|d| d.meta.seq);
    let mut head = [0u8; 32];
    let mut next_version: HashMap<[u8; 16], u32> = HashMap::new();
    for (i, d) in order.iter().enumerate() {
        let expected = next_version.entry(d.note).or_insert(1);
        if d.meta.seq != i as u64 || d.version != *expected {
            problems.push(IntegrityError::new(
                format!(
                    "note {}/{}/v{}",
                    st.blind.short(),
                    NoteId(d.note),
                    d.version
                ),
                ProblemKind::Moved,
                "out of place in the patient's note chain",
            ));
            return problems;
        }
        *expected += 1;
        head = note_link(&head, &d.note, d.version);
    }
    if problems.is_empty() && head != m.head {
        problems.push(IntegrityError::new(
            &location,
            ProblemKind::Inconsistent,
            "chain head does not match the notes stored",
        ));
    }
    if next_version.len() as u64 != m.notes && problems.is_empty() {
        problems.push(IntegrityError::new(
            &location,
            ProblemKind::Inconsistent,
            "note count does not match",
        ));
    }
    problems
}

/// The public view of a decoded note version.
pub(super) fn to_note(d: Decoded) -> Note {
    Note {
        id: NoteId(d.note),
        version: d.version,
        created_at: Timestamp::from_unix_millis(d.meta.created_at),
        updated_at: Timestamp::from_unix_millis(d.meta.updated_at),
        author: d.meta.author.clone(),
        kind: d.meta.kind.clone(),
        written_by: d.written_by.as_ref().map(|(u, _)| u.clone()),
        written_via_recovery_key: d.written_by.as_ref().is_some_and(|(_, r)| *r),
        bytes: d.bytes,
        body: d.body,
    }
}

/// The ids of the notes, ordered by when each note was first added.
pub(super) fn note_order(decoded: &[Decoded]) -> Vec<NoteId> {
    let mut first: HashMap<[u8; 16], u64> = HashMap::new();
    for d in decoded {
        let s = first.entry(d.note).or_insert(d.meta.seq);
        *s = (*s).min(d.meta.seq);
    }
    let mut ids: Vec<([u8; 16], u64)> = first.into_iter().collect();
    ids.sort_by_key(|(_, s)| *s);
    ids.into_iter().map(|(n, _)| NoteId(n)).collect()
}

/// The latest version of each note, ordered by when the note was first added.
pub(super) fn current_versions(decoded: Vec<Decoded>) -> Vec<Note> {
    let mut first_seq: HashMap<[u8; 16], u64> = HashMap::new();
    let mut latest: HashMap<[u8; 16], Decoded> = HashMap::new();
    for d in decoded {
        let s = first_seq.entry(d.note).or_insert(d.meta.seq);
        *s = (*s).min(d.meta.seq);
        match latest.get(&d.note) {
            Some(cur) if cur.version >= d.version => {}
            _ => {
                latest.insert(d.note, d);
            }
        }
    }
    let mut notes: Vec<Decoded> = latest.into_values().collect();
    notes.sort_by_key(|d| first_seq[&d.note]);
    notes.into_iter().map(to_note).collect()
}
