//! Upgrading a format-1 vault to format 2 (ADR 0015, docs/key-management.md, "Upgrading to
//! format 2"): crash-safe and resumable, each step one atomic write that leaves a vault that
//! opens and verifies.

use carnet_storage::{Batch, Store};

use super::fence::KeyOp;
use super::logging::Event;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::records::{space, JobSlot, JobV1, ManifestState, JOB_UPGRADE};
use crate::Error;

/// Patients whose state one baseline entry records (65 to 73 bytes each, in the entry's body).
const BASELINE_PATIENTS: usize = 2000;

/// What an upgrade did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgrade {
    /// The format before.
    pub from_format: u16,
    /// The format after: 2.
    pub to_format: u16,
    /// Patients whose state the baseline entries record.
    pub patients: u64,
    /// Slots still legacy (format 1's protection): each is re-protected at its user's next
    /// unlock (the recovery key's when it is next used or replaced); until then it is open to
    /// master-key injection as in format 1.
    pub legacy_slots: u64,
    /// Whether this finished an upgrade that an interruption had left unfinished.
    pub resumed: bool,
}

impl<S: Store> Vault<S> {
    /// Upgrades the vault to format 2 (administrators), or finishes an upgrade left
    /// unfinished; a vault already in format 2 is left as it is. The steps:
    ///
    /// 1. a keyring key among the vault keys;
    /// 2. the users record in format 2, with serial number 1, and a job record of the upgrade
    ///    (an older Carnet can no longer open the vault: it says "newer format");
    /// 3. the keyring in version 2, the unlocking user's slot re-protected with the keyring
    ///    key (the others at their users' next unlock): from here on the vault is in format 2;
    /// 4. baseline access-log entries recording every patient's manifest state and the
    ///    registry's, so that `verify` holds patients written in format 1 to them too;
    /// 5. the job record deleted.
    pub fn upgrade(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<Upgrade, Error> {
        let result = self
            .require(Duty::Administration)
            .and_then(|()| self.alone(KeyOp::Upgrade, |v| v.upgrade_unlogged(progress)));
        let logged = self.logged_result(Action::KeyUpgrade, None, result);
        self.end_key_operation(logged)
    }

    fn upgrade_unlogged(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<Upgrade, Error> {
        self.require(Duty::Administration)?;
        self.require_no_retiring_keys()?;
        let from_format = self.keys.format();
        let mut resumed = self.load_job(JobSlot::Upgrade)?.is_some();
        if from_format < 2 {
            // 1.
            self.keys.ensure_keyring_key(&self.store)?;
            // 2. (again, if an interruption left the keyring in version 1)
            let (users, serial, stored) = self.load_users_for_change()?;
            let mut b = Batch::new();
            let serial = self.stage_users_as(&mut b, &users, serial, stored, 2)?;
            let job = self.load_job(JobSlot::Upgrade)?;
            resumed |= job.is_some();
            if job.is_none() {
                let job = JobV1 {
                    kind: JOB_UPGRADE,
                    target: 2,
                    source: [0; 32],
                    done: 0,
                };
                b.require(space::META, JobSlot::Upgrade.meta_key(), None);
                b.put(
                    space::META,
                    JobSlot::Upgrade.meta_key(),
                    self.seal_job(JobSlot::Upgrade, &job)?,
                );
            }
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
            // 3. The keyring says the baseline is still to write (so that deleting the job
            //    record cannot skip it), and holds as patient-key floor the lowest version a
            //    patient is at (revocations made in format 1 are behind it).
            let floor = self
                .patient_versions()?
                .iter()
                .map(|(_, current, _)| *current)
                .min()
                .unwrap_or(0);
            self.keys.switch_to_format_2(&self.store, serial, floor)?;
        }
        // 4.
        let mut patients = 0;
        if self.keys.baseline_pending() {
            let (job, stored) = match self.load_job(JobSlot::Upgrade)? {
                Some(j) => j,
                None => {
                    // The job record is gone while the keyring says the baseline is not
                    // written: all of it again.
                    resumed = true;
                    let job = JobV1 {
                        kind: JOB_UPGRADE,
                        target: 2,
                        source: [0; 32],
                        done: 0,
                    };
                    let sealed = self.seal_job(JobSlot::Upgrade, &job)?;
                    let mut b = Batch::new();
                    b.require(space::META, JobSlot::Upgrade.meta_key(), None);
                    b.put(space::META, JobSlot::Upgrade.meta_key(), sealed.clone());
                    self.require_fence(&mut b);
                    self.store.commit(b)?;
                    self.store.flush()?;
                    (job, sealed)
                }
            };
            patients = self.write_baseline(job, stored, progress)?;
            self.keys.clear_baseline_pending(&self.store)?;
        }
        // 5.
        self.finish_job(JobSlot::Upgrade)?;
        Ok(Upgrade {
            from_format,
            to_format: self.keys.format(),
            patients,
            legacy_slots: self.keys.legacy_slots(),
            resumed,
        })
    }

    /// Writes the baseline entries from where the job record says they stopped: each in one
    /// atomic batch with the job record's progress. The last also records the registry.
    fn write_baseline(
        &mut self,
        mut job: JobV1,
        mut stored: Vec<u8>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let mut states = self.all_patients()?;
        states.sort_by_key(|s| s.info.seq);
        let total = states.len() as u64;
        let start = usize::try_from(job.done)
            .unwrap_or(usize::MAX)
            .min(states.len());
        let rest = &states[start..];
        let mut chunks: Vec<&[_]> = rest.chunks(BASELINE_PATIENTS).collect();
        if chunks.is_empty() {
            // The registry's state still gets its entry.
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut event = Event::new(Action::KeyUpgrade, None, "baseline");
            event.states = chunk
                .iter()
                .map(|st| ManifestState {
                    blind: st.blind.0,
                    next_seq: st.manifest.next_seq,
                    head: st.manifest.head,
                })
                .collect();
            if i == last {
                event.registry = Some(self.load_registry()?.0);
            }
            job.done += chunk.len() as u64;
            let sealed = self.seal_job(JobSlot::Upgrade, &job)?;
            let _writing = self.writing();
            let mut b = Batch::new();
            b.require(space::META, JobSlot::Upgrade.meta_key(), Some(stored));
            b.put(space::META, JobSlot::Upgrade.meta_key(), sealed.clone());
            self.stage_log(&mut b, &event)?;
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
            stored = sealed;
            drop(_writing);
            self.fence_renew()?;
            progress(job.done, total);
        }
        Ok(total)
    }
}
