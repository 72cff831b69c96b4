//! Job records: what a long operation (a rotation of every patient key, an import, a
//! revocation) has left to do, so that running it again resumes it (docs/format.md, "Payloads",
//! Job).

use carnet_storage::{Batch, Store};

use super::Vault;
use crate::envelope::{open_frame, seal_frame};
use crate::records::{space, JobSlot, JobV1};
use crate::sealing::JobRecord;
use crate::Error;

impl<S: Store> Vault<S> {
    /// The job record in `slot`, with its stored bytes, if there is one.
    pub(super) fn load_job(&self, slot: JobSlot) -> Result<Option<(JobV1, Vec<u8>)>, Error> {
        self.load_job_named(slot, "job")
    }

    /// [`Vault::load_job`], naming the record `location` in errors.
    pub(super) fn load_job_named(
        &self,
        slot: JobSlot,
        location: &str,
    ) -> Result<Option<(JobV1, Vec<u8>)>, Error> {
        let Some(stored) = self.store.get(space::META, slot.meta_key())? else {
            return Ok(None);
        };
        let (job, _) = open_frame::<JobRecord, JobV1>(
            location,
            &stored,
            self.registry_key_of(location, &stored)?,
            self.vault_id(),
            &slot,
        )?;
        Ok(Some((job, stored)))
    }

    /// `job` sealed for `slot`.
    pub(super) fn seal_job(&self, slot: JobSlot, job: &JobV1) -> Result<Vec<u8>, Error> {
        seal_frame::<JobRecord, _>(self.keys.registry()?, self.vault_id(), &slot, job)
    }

    /// Adds to `b` a new job record of `kind` in `slot` (which must be empty), bringing
    /// patients to key version `target`.
    pub(super) fn stage_job(
        &self,
        b: &mut Batch,
        slot: JobSlot,
        kind: u8,
        target: u32,
    ) -> Result<JobV1, Error> {
        let job = JobV1 {
            kind,
            target,
            source: [0; 32],
            done: 0,
        };
        b.require(space::META, slot.meta_key(), None);
        b.put(space::META, slot.meta_key(), self.seal_job(slot, &job)?);
        Ok(job)
    }

    /// Deletes the job record in `slot`, if any (the job is done), durably.
    pub(super) fn finish_job(&self, slot: JobSlot) -> Result<(), Error> {
        if let Some((_, stored)) = self.load_job(slot)? {
            let mut b = Batch::new();
            b.require(space::META, slot.meta_key(), Some(stored));
            b.delete(space::META, slot.meta_key());
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
        }
        Ok(())
    }
}
