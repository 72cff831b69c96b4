//! The three steps of a master-key rotation, each durable before the next begins, so that a
//! crash between any two leaves a vault that unlocks and resumes (docs/key-management.md,
//! "Rotating the master key"). `vault/rotate_master.rs` runs them.

use carnet_storage::Store;

use super::{rewrap, Keychain};
use crate::error::{integrity, ProblemKind};
use crate::keys::{EpochKey, WrappedKey};
use crate::keystore::{KeyStore, KEYS_DOC, ROOT_DOC};
use crate::records::PatientKeyAt;
use crate::sealing::{PatientKeyRecord, VaultKeysRecord};
use crate::Error;

/// Patient keys re-wrapped per unit of parallel work.
const REWRAP_CHUNK: usize = 1024;

impl Keychain {
    /// Keys the next rotation re-wraps: every patient key and the vault keys.
    pub(in crate::vault) fn keys_to_rewrap(&self) -> u64 {
        self.index().patient.len() as u64 + 1
    }

    /// The epoch the next step goes to: the pending one, or the one after the current.
    pub(in crate::vault) fn next_epoch(&self) -> u32 {
        self.pending
            .as_ref()
            .map_or(self.keyring.epoch + 1, EpochKey::epoch)
    }

    /// Step 1: a new master sealed to every slot, beside the current one (the keyring
    /// replaced). Does nothing when a rotation is already under way; returns whether one was.
    pub(in crate::vault) fn seal_next_epoch<S: Store>(&mut self, store: &S) -> Result<bool, Error> {
        if self.pending.is_some() {
            return Ok(true);
        }
        let next = self
            .keyring
            .epoch
            .checked_add(1)
            .ok_or(Error::Internal("epoch overflow"))?;
        let master = EpochKey::random(next)?;
        let mut keyring = self.keyring.clone();
        keyring.seal_to_all(&master)?;
        store.replace_doc(ROOT_DOC, &keyring.encode(&self.master, &self.keyring_keys)?)?;
        self.keyring = keyring;
        self.pending = Some(master);
        Ok(false)
    }

    /// Step 2: every wrapped key re-wrapped under the pending epoch, on every core, and the key
    /// store replaced whole (unless a previous run got that far). `progress` gets (keys
    /// re-wrapped, keys in all). Returns the keys re-wrapped.
    pub(in crate::vault) fn rewrap_for_next_epoch<S: Store>(
        &mut self,
        store: &S,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let next = self
            .pending
            .as_ref()
            .ok_or(Error::Internal("no rotation under way"))?;
        let total = self.keys_to_rewrap();
        let vault_id = *self.vault_id();
        let mut rewrapped = 0;
        let mut index = self.index();
        if index.epoch != next.epoch() {
            let new_wrap_patient = next.patient_keys_wrap();
            // The master of the key store's epoch: the current one (a store already under the
            // next epoch was handled above).
            let old_master = if index.epoch == self.keyring.epoch {
                &self.master
            } else {
                next
            };
            let mut rewritten = KeyStore::new(next.epoch());
            let vault_keys = index
                .vault_keys
                .as_ref()
                .ok_or_else(|| integrity("vault keys", ProblemKind::Missing, "missing"))?;
            rewritten.vault_keys = Some(rewrap::<VaultKeysRecord>(
                &vault_id,
                "vault keys",
                vault_keys,
                &(),
                &old_master.vault_keys_wrap(),
                &next.vault_keys_wrap(),
            )?);
            rewrapped += 1;
            // Results keep their order.
            let old_wrap_patient = &self.wrap_patient;
            // A key wrapped under another epoch than the store's is a leftover (a process's
            // append whose write was refused, ADR 0019): not re-wrapped; a candidate of its
            // place that opens takes its place. One of this epoch that does not open is
            // reported, as always.
            let epoch = old_wrap_patient.epoch();
            let stale = |w: &WrappedKey| {
                crate::envelope::Sealed::parse(w.as_bytes()).is_ok_and(|s| s.key_version != epoch)
            };
            let entries: Vec<(&PatientKeyAt, &WrappedKey)> =
                index.patient.iter().filter(|(_, w)| !stale(w)).collect();
            let leftovers: Vec<PatientKeyAt> = index
                .patient
                .iter()
                .filter(|(_, w)| stale(w))
                .map(|(at, _)| *at)
                .collect();
            let chunks = crate::par::map_parallel(entries.chunks(REWRAP_CHUNK).map(Ok), |chunk| {
                chunk
                    .iter()
                    .map(|(at, wrapped)| {
                        rewrap::<PatientKeyRecord>(
                            &vault_id,
                            "patient key",
                            wrapped,
                            at,
                            old_wrap_patient,
                            &new_wrap_patient,
                        )
                        .map(|w| (**at, w))
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })?;
            for chunk in chunks {
                for (at, w) in chunk? {
                    rewritten.patient.insert(at, w);
                    rewrapped += 1;
                }
                progress(rewrapped, total);
            }
            // The earlier candidates of a place (two processes registered one patient at once:
            // the patient's record may need one of them) are re-wrapped too; one that does not
            // open is no key of this vault's and is dropped.
            for (at, ws) in &index.earlier {
                for w in ws {
                    if let Ok(w) = rewrap::<PatientKeyRecord>(
                        &vault_id,
                        "patient key",
                        w,
                        at,
                        old_wrap_patient,
                        &new_wrap_patient,
                    ) {
                        rewritten.add_earlier(*at, w);
                    }
                }
            }
            for at in leftovers {
                let promoted = rewritten
                    .earlier
                    .get(&at)
                    .and_then(|ws| ws.first().cloned());
                if let Some(w) = promoted {
                    rewritten.choose(at, w);
                }
            }
            drop(entries);
            store.replace_doc(KEYS_DOC, &rewritten.encode(&vault_id))?;
            *index = rewritten;
            drop(index);
            self.wrap_patient = new_wrap_patient;
        }
        progress(total, total);
        Ok(rewrapped)
    }

    /// Step 3: the pending epoch made current and every older one destroyed in every slot
    /// (the keyring replaced, authenticated under the new master).
    pub(in crate::vault) fn finish_next_epoch<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        let next = self
            .pending
            .take()
            .ok_or(Error::Internal("no rotation under way"))?;
        let mut keyring = self.keyring.clone();
        keyring.epoch = next.epoch();
        keyring.drop_seals_before(next.epoch());
        let written = keyring
            .encode(&next, &self.keyring_keys)
            .and_then(|root| Ok(store.replace_doc(ROOT_DOC, &root)?));
        if let Err(e) = written {
            self.pending = Some(next);
            return Err(e);
        }
        self.keyring = keyring;
        self.master = next;
        Ok(())
    }
}
