//! The keyring: the vault's root document. It names the vault, its current master epoch, and
//! holds the key slots that protect the master key. Specified in docs/format.md, "Keyring".
//!
//! A passphrase slot holds an X25519 key pair. Its private half is sealed under a key derived
//! from the passphrase with Argon2id; the master key is sealed to its public half (an
//! HPKE-style ephemeral-static X25519 + HKDF-SHA-256 + XChaCha20-Poly1305 construction, as in
//! age's X25519 recipients). So the master can be re-sealed for every slot without any
//! passphrase. Both sealings carry an HKDF-derived key commitment, checked in constant time
//! before decryption.

use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{
    self, LABEL_RECOVERY_KDF, LABEL_SEAL_AAD, LABEL_SEAL_COMMIT, LABEL_SEAL_KEY, LABEL_SLOT_AAD,
    LABEL_SLOT_NAME, NONCE_LEN, TAG_LEN,
};
use crate::error::{integrity, ProblemKind};
use crate::keys::{EpochKey, SlotKey};
use crate::recovery::RecoveryKey;
use crate::secret::{Passphrase, SecretKey};
use crate::Error;

/// `"CARNETKR"`: the first bytes of a keyring.
pub(crate) const MAGIC: [u8; 8] = *b"CARNETKR";
/// The keyring format this code writes and reads.
pub(crate) const VERSION: u16 = 1;
const SLOT_KIND_PASSPHRASE: u8 = 1;
const SLOT_KIND_RECOVERY: u8 = 2;
const KDF_ARGON2ID_13: u8 = 1;
/// A recovery slot's "KDF": HKDF-SHA-256 of the 256-bit recovery key, no stretching needed.
const KDF_NONE: u8 = 0;
/// The slot name of the recovery key; user names never contain NUL.
pub(crate) const RECOVERY_SLOT: &str = "\0recovery";

/// What opens a slot.
pub(crate) enum SlotSecret<'a> {
    /// A user's passphrase, stretched with Argon2id.
    Passphrase(&'a Passphrase, KdfParams),
    /// The recovery key.
    Recovery(&'a RecoveryKey),
}
const SEAL_LEN: usize = 4 + 32 + 32 + NONCE_LEN + 32 + TAG_LEN;
/// Fixed part of a passphrase slot, after its 2-byte length and before its seals.
const SLOT_FIXED_LEN: usize = 32 + 1 + 1 + 12 + 16 + 32 + 32 + NONCE_LEN + 32 + TAG_LEN + 1;
const MAX_SLOTS: usize = 1024;
const MAX_SEALS: usize = 8;

/// Argon2id cost parameters of a passphrase slot.
///
/// [`KdfParams::default`] is RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes).
/// Values are range-checked both when a vault is created and when a slot is read, so a crafted
/// slot cannot make unlocking use more than [`KdfParams::MAX_MEMORY_MIB`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

impl KdfParams {
    /// Smallest memory accepted, in MiB.
    pub const MIN_MEMORY_MIB: u32 = 8;
    /// Largest memory accepted, in MiB.
    pub const MAX_MEMORY_MIB: u32 = 1024;
    /// Largest number of passes accepted.
    pub const MAX_ITERATIONS: u32 = 16;
    /// Largest number of lanes accepted.
    pub const MAX_PARALLELISM: u32 = 16;

    /// Parameters with `memory_mib` MiB, `iterations` passes and `parallelism` lanes, if each is
    /// within the accepted range (8..=1024 MiB, 1..=16, 1..=16).
    pub fn new(memory_mib: u32, iterations: u32, parallelism: u32) -> Result<Self, Error> {
        if !(Self::MIN_MEMORY_MIB..=Self::MAX_MEMORY_MIB).contains(&memory_mib)
            || !(1..=Self::MAX_ITERATIONS).contains(&iterations)
            || !(1..=Self::MAX_PARALLELISM).contains(&parallelism)
        {
            return Err(Error::InvalidArgument(format!(
                "KDF parameters out of range: memory must be {}..={} MiB, iterations 1..={}, \
                 parallelism 1..={}",
                Self::MIN_MEMORY_MIB,
                Self::MAX_MEMORY_MIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            )));
        }
        Ok(KdfParams {
            memory_kib: memory_mib * 1024,
            iterations,
            parallelism,
        })
    }

    fn from_stored(memory_kib: u32, iterations: u32, parallelism: u32) -> Option<Self> {
        if !memory_kib.is_multiple_of(1024) {
            return None;
        }
        KdfParams::new(memory_kib / 1024, iterations, parallelism).ok()
    }

    /// Memory in MiB.
    pub fn memory_mib(&self) -> u32 {
        self.memory_kib / 1024
    }
    /// Number of passes.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
    /// Number of lanes.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
    /// Whether any parameter is below [`KdfParams::default`].
    pub fn is_below_default(&self) -> bool {
        let d = KdfParams::default();
        self.memory_kib < d.memory_kib
            || self.iterations < d.iterations
            || self.parallelism < d.parallelism
    }

    fn derive(&self, passphrase: &Passphrase, salt: &[u8; 16]) -> Result<SecretKey, Error> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|_| Error::Internal("argon2 parameters"))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        a.hash_password_into(passphrase.expose(), salt, &mut *out)
            .map_err(|_| Error::Internal("argon2 failed"))?;
        Ok(SecretKey::from_bytes(*out))
    }
}

/// The master key sealed to a slot's public key, for one epoch.
#[derive(Clone)]
struct Seal {
    epoch: u32,
    ephemeral: [u8; 32],
    commit: [u8; 32],
    nonce: [u8; NONCE_LEN],
    ct: [u8; 32 + TAG_LEN],
}

/// One passphrase slot.
#[derive(Clone)]
pub(crate) struct Slot {
    name_tag: [u8; 32],
    /// `None` for the recovery slot.
    kdf: Option<KdfParams>,
    salt: [u8; 16],
    public: [u8; 32],
    commit: [u8; 32],
    sk_nonce: [u8; NONCE_LEN],
    sk_ct: [u8; 32 + TAG_LEN],
    seals: Vec<Seal>,
}

/// The master keys a successful unlock yields.
pub(crate) struct Masters {
    /// The master of the keyring's current epoch.
    pub(crate) current: EpochKey,
    /// The next epoch's master, while a rotation is under way.
    pub(crate) pending: Option<EpochKey>,
}

/// The parsed keyring.
#[derive(Clone)]
pub(crate) struct Keyring {
    pub(crate) vault_id: [u8; 16],
    pub(crate) epoch: u32,
    slots: Vec<Slot>,
    mac: [u8; 32],
}

/// The tag that names a user's slot: SHA-256(label || vault id || user name).
pub(crate) fn name_tag(vault_id: &[u8; 16], user: &str) -> [u8; 32] {
    crypto::sha256(&[LABEL_SLOT_NAME, vault_id, user.as_bytes()])
}

fn seal_keys(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    public: &[u8; 32],
    vault_id: &[u8; 16],
    epoch: u32,
    tag: &[u8; 32],
) -> (SecretKey, [u8; 32]) {
    let salt = [&ephemeral[..], &public[..]].concat();
    let ep = epoch.to_be_bytes();
    let key = crypto::hkdf(Some(&salt), shared, &[LABEL_SEAL_KEY, vault_id, &ep, tag]);
    let commit = crypto::hkdf(
        Some(&salt),
        shared,
        &[LABEL_SEAL_COMMIT, vault_id, &ep, tag],
    );
    (key, *commit.expose())
}

impl Slot {
    fn aad(&self, vault_id: &[u8; 16]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(LABEL_SLOT_AAD);
        a.extend_from_slice(vault_id);
        a.extend_from_slice(&self.name_tag);
        self.encode_kind(&mut a);
        a.extend_from_slice(&self.salt);
        a.extend_from_slice(&self.public);
        a
    }

    /// Kind, KDF id and KDF parameters, as stored (and authenticated in the slot's AAD).
    fn encode_kind(&self, out: &mut Vec<u8>) {
        match &self.kdf {
            Some(kdf) => {
                out.push(SLOT_KIND_PASSPHRASE);
                out.push(KDF_ARGON2ID_13);
                out.extend_from_slice(&kdf.memory_kib.to_be_bytes());
                out.extend_from_slice(&kdf.iterations.to_be_bytes());
                out.extend_from_slice(&kdf.parallelism.to_be_bytes());
            }
            None => {
                out.push(SLOT_KIND_RECOVERY);
                out.push(KDF_NONE);
                out.extend_from_slice(&[0u8; 12]);
            }
        }
    }

    /// The key-encryption root of this slot for `secret`, or `WrongPassphrase` when the secret
    /// is not of the slot's kind.
    fn kek_root(&self, secret: &SlotSecret<'_>) -> Result<SecretKey, Error> {
        match (secret, &self.kdf) {
            (SlotSecret::Passphrase(p, _), Some(kdf)) => kdf.derive(p, &self.salt),
            (SlotSecret::Recovery(r), None) => Ok(crypto::hkdf(
                Some(&self.salt),
                r.expose(),
                &[LABEL_RECOVERY_KDF],
            )),
            _ => Err(Error::WrongPassphrase),
        }
    }

    /// A new slot named `user` opened by `secret`, with `master` sealed to it.
    pub(crate) fn create(
        vault_id: &[u8; 16],
        user: &str,
        secret: SlotSecret<'_>,
        master: &EpochKey,
    ) -> Result<Slot, Error> {
        let mut salt = [0u8; 16];
        crypto::fill_random(&mut salt)?;
        let private = crypto::random_key()?;
        let sk = StaticSecret::from(*private.expose());
        let public = PublicKey::from(&sk).to_bytes();
        let kdf = match &secret {
            SlotSecret::Passphrase(_, kdf) => Some(*kdf),
            SlotSecret::Recovery(_) => None,
        };
        let mut slot = Slot {
            name_tag: name_tag(vault_id, user),
            kdf,
            salt,
            public,
            commit: [0u8; 32],
            sk_nonce: crypto::random_nonce()?,
            sk_ct: [0u8; 32 + TAG_LEN],
            seals: Vec::new(),
        };
        let (kek, commit) = SlotKey::derive(&slot.kek_root(&secret)?, vault_id);
        slot.commit = commit;
        let mut buf = Zeroizing::new(private.expose().to_vec());
        crypto::seal_in_place(kek.aead(), &slot.sk_nonce, &slot.aad(vault_id), &mut buf, 0)?;
        slot.sk_ct.copy_from_slice(&buf);
        slot.add_seal(vault_id, master)?;
        Ok(slot)
    }

    /// Seals `master` to this slot's public key, for its epoch (no passphrase needed).
    pub(crate) fn add_seal(&mut self, vault_id: &[u8; 16], master: &EpochKey) -> Result<(), Error> {
        let epoch = master.epoch();
        let esk = StaticSecret::from(*crypto::random_key()?.expose());
        let ephemeral = PublicKey::from(&esk).to_bytes();
        let shared = esk.diffie_hellman(&PublicKey::from(self.public));
        if !shared.was_contributory() {
            return Err(Error::Internal("slot public key is degenerate"));
        }
        let (key, commit) = seal_keys(
            shared.as_bytes(),
            &ephemeral,
            &self.public,
            vault_id,
            epoch,
            &self.name_tag,
        );
        let nonce = crypto::random_nonce()?;
        let mut buf = Zeroizing::new(master.bytes_to_wrap().to_vec());
        let aad = seal_aad(vault_id, epoch, &self.name_tag, &ephemeral);
        crypto::seal_in_place(&key, &nonce, &aad, &mut buf, 0)?;
        let mut ct = [0u8; 32 + TAG_LEN];
        ct.copy_from_slice(&buf);
        self.seals.retain(|s| s.epoch != epoch);
        self.seals.push(Seal {
            epoch,
            ephemeral,
            commit,
            nonce,
            ct,
        });
        Ok(())
    }

    /// Opens this slot's private key with `passphrase`.
    ///
    /// A wrong passphrase and a damaged slot both give [`Error::WrongPassphrase`]: before the
    /// key commitment is checked nothing can tell them apart.
    fn open_secret(
        &self,
        vault_id: &[u8; 16],
        secret: &SlotSecret<'_>,
    ) -> Result<StaticSecret, Error> {
        let kek_root = self.kek_root(secret)?;
        let (kek, commit) = SlotKey::derive(&kek_root, vault_id);
        if !bool::from(commit.ct_eq(&self.commit)) {
            return Err(Error::WrongPassphrase);
        }
        let sk_bytes = crypto::open(kek.aead(), &self.sk_nonce, &self.aad(vault_id), &self.sk_ct)
            .ok_or(Error::WrongPassphrase)?;
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&sk_bytes);
        let sk = StaticSecret::from(*raw);
        if !bool::from(PublicKey::from(&sk).as_bytes().ct_eq(&self.public)) {
            return Err(Error::WrongPassphrase);
        }
        Ok(sk)
    }

    /// Opens the seal of `epoch` with the slot's private key.
    fn open_seal(
        &self,
        vault_id: &[u8; 16],
        sk: &StaticSecret,
        epoch: u32,
    ) -> Result<Option<EpochKey>, Error> {
        let Some(seal) = self.seals.iter().find(|s| s.epoch == epoch) else {
            return Ok(None);
        };
        let shared = sk.diffie_hellman(&PublicKey::from(seal.ephemeral));
        // As when sealing: an ephemeral key of low order (crafted) gives a shared secret that
        // does not depend on the slot's key.
        if !shared.was_contributory() {
            return Err(integrity(
                "keyring",
                ProblemKind::FailedAuthentication,
                "sealed master key: degenerate ephemeral key",
            ));
        }
        let (key, commit) = seal_keys(
            shared.as_bytes(),
            &seal.ephemeral,
            &self.public,
            vault_id,
            epoch,
            &self.name_tag,
        );
        if !bool::from(commit.ct_eq(&seal.commit)) {
            return Err(integrity(
                "keyring",
                ProblemKind::FailedAuthentication,
                "sealed master key commitment",
            ));
        }
        let aad = seal_aad(vault_id, epoch, &self.name_tag, &seal.ephemeral);
        let m = crypto::open(&key, &seal.nonce, &aad, &seal.ct).ok_or_else(|| {
            integrity(
                "keyring",
                ProblemKind::FailedAuthentication,
                "sealed master failed authentication",
            )
        })?;
        let mut mk = [0u8; 32];
        mk.copy_from_slice(&m);
        Ok(Some(EpochKey::from_bytes(epoch, mk)))
    }

    /// The slot's KDF parameters (the defaults for the recovery slot, which has none).
    pub(crate) fn kdf(&self) -> KdfParams {
        self.kdf.unwrap_or_default()
    }
}

fn seal_aad(vault_id: &[u8; 16], epoch: u32, tag: &[u8; 32], ephemeral: &[u8; 32]) -> Vec<u8> {
    [
        LABEL_SEAL_AAD,
        vault_id,
        &epoch.to_be_bytes(),
        tag,
        ephemeral,
    ]
    .concat()
}

/// A byte reader that fails (returns `None`) instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
}

/// Why a keyring could not be read.
pub(crate) enum KeyringParseError {
    Foreign,
    FutureVersion(u16),
    Malformed,
}

impl Keyring {
    /// A keyring for a new vault with one slot.
    pub(crate) fn new(vault_id: [u8; 16], epoch: u32, slot: Slot) -> Keyring {
        Keyring {
            vault_id,
            epoch,
            slots: vec![slot],
            mac: [0u8; 32],
        }
    }

    /// The slot of `user`, if any.
    pub(crate) fn slot(&self, user: &str) -> Option<&Slot> {
        let tag = name_tag(&self.vault_id, user);
        self.slots.iter().find(|s| s.name_tag == tag)
    }

    /// Opens `user`'s slot with `passphrase`, checks the keyring's MAC with the master of the
    /// current epoch, and returns that master and, if a master-key rotation is under way (the
    /// slot holds a seal for the next epoch), the next epoch's master.
    pub(crate) fn unlock(&self, user: &str, secret: &SlotSecret<'_>) -> Result<Masters, Error> {
        let slot_name = match secret {
            SlotSecret::Passphrase(..) => user,
            SlotSecret::Recovery(_) => RECOVERY_SLOT,
        };
        let slot = self.slot(slot_name).ok_or(match secret {
            SlotSecret::Passphrase(..) => Error::UnknownUser,
            SlotSecret::Recovery(_) => Error::WrongPassphrase,
        })?;
        let sk = slot.open_secret(&self.vault_id, secret)?;
        let current = slot
            .open_seal(&self.vault_id, &sk, self.epoch)?
            .ok_or_else(|| {
                integrity(
                    "keyring",
                    ProblemKind::Missing,
                    "no sealed master for the current epoch",
                )
            })?;
        let mac = current.keyring_mac(&self.encode_body());
        if !bool::from(mac.ct_eq(&self.mac)) {
            return Err(integrity(
                "keyring",
                ProblemKind::FailedAuthentication,
                "MAC mismatch: the keyring was altered",
            ));
        }
        let next = self
            .epoch
            .checked_add(1)
            .ok_or(Error::Internal("epoch overflow"))?;
        let pending = slot.open_seal(&self.vault_id, &sk, next)?;
        Ok(Masters { current, pending })
    }

    /// Every slot.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Seals `master` to every slot, for its epoch (no passphrase needed).
    pub(crate) fn seal_to_all(&mut self, master: &EpochKey) -> Result<(), Error> {
        let vault_id = self.vault_id;
        for s in &mut self.slots {
            s.add_seal(&vault_id, master)?;
        }
        Ok(())
    }

    /// Removes every seal of an epoch below `epoch` from every slot.
    pub(crate) fn drop_seals_before(&mut self, epoch: u32) {
        for s in &mut self.slots {
            s.seals.retain(|seal| seal.epoch >= epoch);
        }
    }

    /// Adds a slot, or replaces the slot of the same name.
    pub(crate) fn add_slot(&mut self, slot: Slot) {
        self.slots.retain(|s| s.name_tag != slot.name_tag);
        self.slots.push(slot);
    }

    /// Removes `user`'s slot (never the last one).
    pub(crate) fn remove_slot(&mut self, user: &str) -> Result<(), Error> {
        let tag = name_tag(&self.vault_id, user);
        let users_left = self
            .slots
            .iter()
            .filter(|s| s.kdf.is_some() && s.name_tag != tag)
            .count();
        if users_left == 0 {
            return Err(Error::InvalidArgument(
                "the last user cannot be removed".into(),
            ));
        }
        self.slots.retain(|s| s.name_tag != tag);
        Ok(())
    }

    /// Serializes the keyring, with a fresh MAC under `master` (the current epoch's).
    pub(crate) fn encode(&mut self, master: &EpochKey) -> Vec<u8> {
        let mut body = self.encode_body();
        self.mac = master.keyring_mac(&body);
        body.extend_from_slice(&self.mac);
        body
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&self.vault_id);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        // Bounded by MAX_SLOTS when parsed, and slots are only added one at a time.
        b.extend_from_slice(&(self.slots.len() as u16).to_be_bytes());
        for s in &self.slots {
            let len = SLOT_FIXED_LEN + s.seals.len() * SEAL_LEN;
            b.extend_from_slice(&(len as u16).to_be_bytes());
            b.extend_from_slice(&s.name_tag);
            s.encode_kind(&mut b);
            b.extend_from_slice(&s.salt);
            b.extend_from_slice(&s.public);
            b.extend_from_slice(&s.commit);
            b.extend_from_slice(&s.sk_nonce);
            b.extend_from_slice(&s.sk_ct);
            b.push(s.seals.len() as u8);
            for seal in &s.seals {
                b.extend_from_slice(&seal.epoch.to_be_bytes());
                b.extend_from_slice(&seal.ephemeral);
                b.extend_from_slice(&seal.commit);
                b.extend_from_slice(&seal.nonce);
                b.extend_from_slice(&seal.ct);
            }
        }
        b
    }

    /// Parses a keyring: exact lengths, range-checked KDF parameters, no trailing bytes.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Keyring, KeyringParseError> {
        use KeyringParseError::*;
        let mut r = Reader(bytes);
        if r.take(8) != Some(&MAGIC[..]) {
            return Err(Foreign);
        }
        let version = r.u16().ok_or(Malformed)?;
        if version != VERSION {
            return Err(if version > VERSION {
                FutureVersion(version)
            } else {
                Malformed
            });
        }
        let vault_id = r.array().ok_or(Malformed)?;
        let epoch = r.u32().ok_or(Malformed)?;
        let n = r.u16().ok_or(Malformed)? as usize;
        if n == 0 || n > MAX_SLOTS {
            return Err(Malformed);
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u16().ok_or(Malformed)? as usize;
            let mut s = Reader(r.take(len).ok_or(Malformed)?);
            let slot = parse_slot(&mut s).ok_or(Malformed)?;
            if !s.0.is_empty() || len != SLOT_FIXED_LEN + slot.seals.len() * SEAL_LEN {
                return Err(Malformed);
            }
            slots.push(slot);
        }
        let mac = r.array().ok_or(Malformed)?;
        if !r.0.is_empty() {
            return Err(Malformed);
        }
        Ok(Keyring {
            vault_id,
            epoch,
            slots,
            mac,
        })
    }
}

fn parse_slot(r: &mut Reader<'_>) -> Option<Slot> {
    let name_tag = r.array()?;
    let kdf = match (r.u8()?, r.u8()?, r.u32()?, r.u32()?, r.u32()?) {
        (SLOT_KIND_PASSPHRASE, KDF_ARGON2ID_13, m, t, p) => Some(KdfParams::from_stored(m, t, p)?),
        (SLOT_KIND_RECOVERY, KDF_NONE, 0, 0, 0) => None,
        _ => return None,
    };
    let salt = r.array()?;
    let public = r.array()?;
    let commit = r.array()?;
    let sk_nonce = r.array()?;
    let sk_ct = r.array()?;
    let nseals = r.u8()? as usize;
    if nseals == 0 || nseals > MAX_SEALS {
        return None;
    }
    let mut seals = Vec::with_capacity(nseals);
    for _ in 0..nseals {
        seals.push(Seal {
            epoch: r.u32()?,
            ephemeral: r.array()?,
            commit: r.array()?,
            nonce: r.array()?,
            ct: r.array()?,
        });
    }
    Some(Slot {
        name_tag,
        kdf,
        salt,
        public,
        commit,
        sk_nonce,
        sk_ct,
        seals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> KdfParams {
        KdfParams::new(8, 1, 1).unwrap()
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string())
    }

    fn keyring() -> (Keyring, Vec<u8>, EpochKey) {
        let master = EpochKey::from_bytes(1, [9; 32]);
        let slot = Slot::create(
            &[1; 16],
            "admin",
            SlotSecret::Passphrase(&pass("correct horse battery"), small()),
            &master,
        )
        .unwrap();
        let mut k = Keyring::new([1; 16], 1, slot);
        let bytes = k.encode(&master);
        (k, bytes, master)
    }

    #[test]
    fn unlock_round_trip_and_wrong_passphrase() {
        let (_, bytes, master) = keyring();
        let k = Keyring::parse(&bytes).ok().unwrap();
        let m = k
            .unlock(
                "admin",
                &SlotSecret::Passphrase(&pass("correct horse battery"), small()),
            )
            .unwrap();
        assert_eq!(m.current.bytes_to_wrap(), master.bytes_to_wrap());
        assert!(m.pending.is_none());
        assert!(matches!(
            k.unlock(
                "admin",
                &SlotSecret::Passphrase(&pass("wrong horse battery"), small())
            ),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(
            k.unlock(
                "bob",
                &SlotSecret::Passphrase(&pass("correct horse battery"), small())
            ),
            Err(Error::UnknownUser)
        ));
    }

    #[test]
    fn every_flipped_byte_is_refused_or_detected() {
        let (_, bytes, _) = keyring();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            match Keyring::parse(&bad) {
                Err(_) => {}
                Ok(k) => assert!(
                    k.unlock(
                        "admin",
                        &SlotSecret::Passphrase(&pass("correct horse battery"), small())
                    )
                    .is_err(),
                    "byte {i} altered without detection"
                ),
            }
        }
    }

    #[test]
    fn crafted_kdf_parameters_are_refused_before_use() {
        let (_, bytes, _) = keyring();
        // Memory field of the first slot: 8 magic + 2 + 16 + 4 + 2 + slot len 2 + tag 32 + 2.
        let at = 8 + 2 + 16 + 4 + 2 + 2 + 32 + 2;
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&(64u32 * 1024 * 1024).to_be_bytes());
        assert!(matches!(
            Keyring::parse(&bad),
            Err(KeyringParseError::Malformed)
        ));
    }

    #[test]
    fn a_seal_with_a_low_order_ephemeral_key_is_refused() {
        let (mut k, _, master) = keyring();
        // The identity point: X25519 with it gives all zeros, whatever the slot's key.
        k.slots[0].seals[0].ephemeral = [0u8; 32];
        let bytes = k.encode(&master);
        let k = Keyring::parse(&bytes).ok().unwrap();
        match k.unlock(
            "admin",
            &SlotSecret::Passphrase(&pass("correct horse battery"), small()),
        ) {
            Err(Error::Integrity(e)) => assert!(e.problem().contains("degenerate"), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a degenerate seal must not open"),
        }
    }

    #[test]
    fn reseal_needs_no_passphrase() {
        let (mut k, _, master) = keyring();
        let m2 = EpochKey::from_bytes(2, [10; 32]);
        k.slots[0].add_seal(&[1; 16], &m2).unwrap();
        k.epoch = 2;
        let bytes = k.encode(&m2);
        let k = Keyring::parse(&bytes).ok().unwrap();
        let got = k
            .unlock(
                "admin",
                &SlotSecret::Passphrase(&pass("correct horse battery"), small()),
            )
            .unwrap();
        assert_eq!(got.current.bytes_to_wrap(), m2.bytes_to_wrap());
        assert_ne!(got.current.bytes_to_wrap(), master.bytes_to_wrap());
    }
}
