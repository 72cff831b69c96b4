//! The keyring: the vault's root document. It names the vault, its current master epoch, and
//! holds the key slots that protect the master key. Specified in docs/format.md, "Keyring".
//!
//! A passphrase slot holds an X25519 key pair. Its private half is sealed under a key derived
//! from the passphrase with Argon2id; the master key is sealed to its public half (an
//! HPKE-style ephemeral-static X25519 + HKDF-SHA-256 + XChaCha20-Poly1305 construction, as in
//! age's X25519 recipients). So the master can be re-sealed for every slot without any
//! passphrase. Both sealings carry an HKDF-derived key commitment, checked in constant time
//! before decryption.
//!
//! Version 2 (format 2, ADR 0015) also puts a keyring key inside each slot's protected part and
//! MACs the keyring under it, so that a master sealed to the slots by someone who never held one
//! is refused; it carries the users record's serial and any revocation under way, both
//! authenticated. Version 1 is still read, and written for a vault not upgraded.

use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{
    self, LABEL_RECOVERY_KDF, LABEL_SEAL_AAD, LABEL_SEAL_COMMIT, LABEL_SEAL_KEY, LABEL_SLOT_AAD,
    LABEL_SLOT_AAD_V2, LABEL_SLOT_NAME, NONCE_LEN, TAG_LEN,
};
use crate::error::{integrity, ProblemKind};
use crate::keys::{EpochKey, KeyringKey, SlotKey};
use crate::recovery::RecoveryKey;
use crate::secret::{Passphrase, SecretKey};
use crate::Error;

/// `"CARNETKR"`: the first bytes of a keyring.
pub(crate) const MAGIC: [u8; 8] = *b"CARNETKR";
/// The newest keyring version this code reads (and writes for new vaults): 2. Version 1 is
/// read too, and written for a vault not upgraded yet.
pub(crate) const VERSION: u16 = 2;
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
    /// A slot opened before by this process (its key-encryption key): to read the keyring
    /// again after another process changed it, without asking for the passphrase again.
    Access(&'a SlotAccess),
}
const SEAL_LEN: usize = 4 + 32 + 32 + NONCE_LEN + 32 + TAG_LEN;
const MAX_SLOTS: usize = 1024;
const MAX_SEALS: usize = 8;
/// Flag of a version-2 keyring: the revocation under way replaces the recovery key at its end
/// (an administrator was removed, or the recovery key itself is being replaced).
pub(crate) const FLAG_REPLACE_RECOVERY: u8 = 1;
/// Flag of a version-2 keyring: an upgrade's baseline entries are still to be written.
pub(crate) const FLAG_BASELINE_PENDING: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_REPLACE_RECOVERY | FLAG_BASELINE_PENDING;

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

    /// Spends what opening a slot of these parameters costs, and nothing more.
    fn spend_like_an_unlock(&self, passphrase: &Passphrase) {
        let _ = self.derive(passphrase, &[0; 16]);
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

/// The master key of one epoch sealed to a slot's public key (docs/format.md, 2.2).
#[derive(Clone)]
struct Seal {
    /// The master key's epoch.
    version: u32,
    ephemeral: [u8; 32],
    commit: [u8; 32],
    nonce: [u8; NONCE_LEN],
    ct: [u8; 32 + TAG_LEN],
}

/// How a slot's passphrase-protected part is made (keyring version 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protection {
    /// The X25519 private key only, under format 1's associated data: a slot carried over from
    /// format 1 that its user has not reopened since (injection stays possible against it).
    Legacy,
    /// The private key and one version of the keyring key, under format 2's associated data.
    Keyed {
        /// The version of the keyring key inside.
        version: u32,
    },
}

const PROTECTION_LEGACY: u8 = 1;
const PROTECTION_KEYED: u8 = 2;
/// The keyed plaintext: private key (32), keyring-key version (4), keyring key (32).
const KEYED_LEN: usize = 32 + 4 + 32;

/// One key slot.
#[derive(Clone)]
pub(crate) struct Slot {
    name_tag: [u8; 32],
    /// `None` for the recovery slot.
    kdf: Option<KdfParams>,
    salt: [u8; 16],
    public: [u8; 32],
    commit: [u8; 32],
    protection: Protection,
    sk_nonce: [u8; NONCE_LEN],
    /// The sealed protected part: 32 + 16 bytes (legacy) or 68 + 16 (keyed).
    sealed: Vec<u8>,
    /// The master key sealed to the slot, one per epoch it can open.
    seals: Vec<Seal>,
}

/// The master keys a successful unlock yields.
pub(crate) struct Masters {
    /// The master of the keyring's current epoch.
    pub(crate) current: EpochKey,
    /// The next epoch's master, while a rotation is under way.
    pub(crate) pending: Option<EpochKey>,
}

/// What opening a slot yields, besides the master keys.
pub(crate) struct Opened {
    pub(crate) masters: Masters,
    /// The keyring key the slot holds (keyed slots).
    pub(crate) key: Option<KeyringKey>,
    /// What re-protects the slot without its passphrase, in this process only.
    pub(crate) access: SlotAccess,
}

/// The opened secrets of one slot: its key-encryption key and private key. Zeroized on drop;
/// lets the unlocking user's own slot be re-protected (a new keyring key) without asking for
/// the passphrase again.
pub(crate) struct SlotAccess {
    tag: [u8; 32],
    kek: SlotKey,
    sk: StaticSecret,
}

impl SlotAccess {
    /// Whether both open the slot of the same name.
    pub(crate) fn opens_same_slot(&self, other: &SlotAccess) -> bool {
        self.tag == other.tag
    }
}

/// The parsed keyring.
#[derive(Clone)]
pub(crate) struct Keyring {
    /// 1 or 2.
    version: u16,
    pub(crate) vault_id: [u8; 16],
    pub(crate) epoch: u32,
    /// The users record's serial number (version 2; 0 in version 1).
    users_serial: u64,
    /// The patient-key version a revocation under way brings every patient to (version 2);
    /// 0: none.
    pending_revocation: u32,
    /// The lowest patient-key version a patient's record may be under (version 2): the target
    /// of the last revocation finished, so that a record put back from before it is refused.
    patient_key_floor: u32,
    /// [`FLAG_REPLACE_RECOVERY`], [`FLAG_BASELINE_PENDING`] (version 2).
    flags: u8,
    slots: Vec<Slot>,
    /// (keyring-key version, MAC); version 0 is the MAC under the master, which a version-1
    /// keyring has alone and a version-2 keyring keeps while a legacy slot remains.
    macs: Vec<(u32, [u8; 32])>,
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

impl Slot {
    /// The associated data of the protected part: format 1's for a legacy slot; format 2's,
    /// with the protection and the version held, for a keyed one.
    fn aad(&self, vault_id: &[u8; 16]) -> Vec<u8> {
        let mut a = Vec::new();
        match self.protection {
            Protection::Legacy => a.extend_from_slice(LABEL_SLOT_AAD),
            Protection::Keyed { .. } => a.extend_from_slice(LABEL_SLOT_AAD_V2),
        }
        a.extend_from_slice(vault_id);
        a.extend_from_slice(&self.name_tag);
        self.encode_kind(&mut a);
        a.extend_from_slice(&self.salt);
        a.extend_from_slice(&self.public);
        if let Protection::Keyed { version } = self.protection {
            a.push(PROTECTION_KEYED);
            a.extend_from_slice(&version.to_be_bytes());
        }
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
            (SlotSecret::Access(_), _) => Err(Error::WrongPassphrase),
            (SlotSecret::Recovery(r), None) => Ok(crypto::hkdf(
                Some(&self.salt),
                r.expose(),
                &[LABEL_RECOVERY_KDF],
            )),
            _ => Err(Error::WrongPassphrase),
        }
    }

    /// A new slot named `user` opened by `secret`, with `master` sealed to it; holding `key`
    /// (keyring version 2), or legacy (version 1) without one.
    pub(crate) fn create(
        vault_id: &[u8; 16],
        user: &str,
        secret: SlotSecret<'_>,
        master: &EpochKey,
        key: Option<&KeyringKey>,
    ) -> Result<(Slot, SlotAccess), Error> {
        let mut salt = [0u8; 16];
        crypto::fill_random(&mut salt)?;
        let private = crypto::random_key()?;
        let sk = StaticSecret::from(*private.expose());
        let public = PublicKey::from(&sk).to_bytes();
        let kdf = match &secret {
            SlotSecret::Passphrase(_, kdf) => Some(*kdf),
            SlotSecret::Recovery(_) => None,
            SlotSecret::Access(_) => {
                return Err(Error::InvalidArgument(
                    "a new key slot needs a passphrase or a recovery key".into(),
                ))
            }
        };
        let mut slot = Slot {
            name_tag: name_tag(vault_id, user),
            kdf,
            salt,
            public,
            commit: [0u8; 32],
            protection: Protection::Legacy,
            sk_nonce: [0u8; NONCE_LEN],
            sealed: Vec::new(),
            seals: Vec::new(),
        };
        let (kek, commit) = SlotKey::derive(&slot.kek_root(&secret)?, vault_id);
        slot.commit = commit;
        slot.protect(vault_id, &kek, &sk, key)?;
        slot.add_seal(vault_id, master)?;
        let access = SlotAccess {
            tag: slot.name_tag,
            kek,
            sk,
        };
        Ok((slot, access))
    }

    /// Seals the protected part under `kek`: the private key, and `key` if given.
    fn protect(
        &mut self,
        vault_id: &[u8; 16],
        kek: &SlotKey,
        sk: &StaticSecret,
        key: Option<&KeyringKey>,
    ) -> Result<(), Error> {
        let mut buf = Zeroizing::new(Vec::with_capacity(KEYED_LEN + TAG_LEN));
        buf.extend_from_slice(sk.as_bytes());
        self.protection = match key {
            Some(k) => {
                buf.extend_from_slice(&k.version().to_be_bytes());
                buf.extend_from_slice(k.bytes_to_wrap());
                Protection::Keyed {
                    version: k.version(),
                }
            }
            None => Protection::Legacy,
        };
        self.sk_nonce = crypto::random_nonce()?;
        let aad = self.aad(vault_id);
        crypto::seal_in_place(kek.aead(), &self.sk_nonce, &aad, &mut buf, 0)?;
        self.sealed = buf.to_vec();
        Ok(())
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
        self.seals.retain(|s| s.version != epoch);
        self.seals.push(Seal {
            version: epoch,
            ephemeral,
            commit,
            nonce,
            ct,
        });
        Ok(())
    }

    /// Opens this slot's protected part with `secret`: its private key, and the keyring key it
    /// holds if keyed.
    ///
    /// A wrong passphrase and a damaged slot both give [`Error::WrongPassphrase`]: before the
    /// key commitment is checked nothing can tell them apart.
    fn open_secret(
        &self,
        vault_id: &[u8; 16],
        secret: &SlotSecret<'_>,
    ) -> Result<(SlotAccess, Option<KeyringKey>), Error> {
        let kek = match secret {
            // The key opened this slot before; if the slot was re-protected since (a new
            // passphrase), the AEAD below refuses it.
            SlotSecret::Access(a) if a.tag == self.name_tag => {
                SlotKey::from_secret(SecretKey::from_bytes(*a.kek.aead().expose()))
            }
            SlotSecret::Access(_) => return Err(Error::WrongPassphrase),
            _ => {
                let kek_root = self.kek_root(secret)?;
                let (kek, commit) = SlotKey::derive(&kek_root, vault_id);
                if !bool::from(commit.ct_eq(&self.commit)) {
                    return Err(Error::WrongPassphrase);
                }
                kek
            }
        };
        let plain = crypto::open(
            kek.aead(),
            &self.sk_nonce,
            &self.aad(vault_id),
            &self.sealed,
        )
        .ok_or(Error::WrongPassphrase)?;
        let want = match self.protection {
            Protection::Legacy => 32,
            Protection::Keyed { .. } => KEYED_LEN,
        };
        if plain.len() != want {
            return Err(Error::WrongPassphrase);
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&plain[..32]);
        let sk = StaticSecret::from(*raw);
        if !bool::from(PublicKey::from(&sk).as_bytes().ct_eq(&self.public)) {
            return Err(Error::WrongPassphrase);
        }
        let key = match self.protection {
            Protection::Legacy => None,
            Protection::Keyed { version } => {
                let inside = u32::from_be_bytes([plain[32], plain[33], plain[34], plain[35]]);
                if inside != version {
                    return Err(Error::WrongPassphrase);
                }
                let mut k = [0u8; 32];
                k.copy_from_slice(&plain[36..68]);
                Some(KeyringKey::from_bytes(version, k))
            }
        };
        Ok((
            SlotAccess {
                tag: self.name_tag,
                kek,
                sk,
            },
            key,
        ))
    }

    /// Opens the seal of `epoch` with the slot's private key.
    fn open_seal(
        &self,
        vault_id: &[u8; 16],
        sk: &StaticSecret,
        epoch: u32,
    ) -> Result<Option<EpochKey>, Error> {
        let Some(seal) = self.seals.iter().find(|s| s.version == epoch) else {
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

    /// Whether the slot was carried over from format 1 and not re-protected since.
    pub(crate) fn is_legacy(&self) -> bool {
        self.protection == Protection::Legacy
    }

    /// The length of the slot's bytes after its length field.
    fn encoded_len(&self, version: u16) -> usize {
        let fixed = 32 + 1 + 1 + 12 + 16 + 32 + 32 + NONCE_LEN + 1;
        // Version 2: the protection and the keyring-key version held.
        let extra = if version >= 2 { 1 + 4 } else { 0 };
        fixed + self.sealed.len() + self.seals.len() * SEAL_LEN + extra
    }
}

fn encode_seal(b: &mut Vec<u8>, seal: &Seal) {
    b.extend_from_slice(&seal.version.to_be_bytes());
    b.extend_from_slice(&seal.ephemeral);
    b.extend_from_slice(&seal.commit);
    b.extend_from_slice(&seal.nonce);
    b.extend_from_slice(&seal.ct);
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
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
}

/// Why a keyring could not be read.
pub(crate) enum KeyringParseError {
    Foreign,
    FutureVersion(u16),
    Malformed,
}

/// The keyring keys a writer holds, by version: every version a slot still holds must be among
/// them for the keyring to be MAC'd.
pub(crate) type KeyringKeys = std::collections::BTreeMap<u32, KeyringKey>;

fn mac_failure() -> Error {
    integrity(
        "keyring",
        ProblemKind::FailedAuthentication,
        "MAC mismatch: the keyring was altered",
    )
}

impl Keyring {
    /// A keyring of `version` (1 or 2) for a new vault with one slot.
    pub(crate) fn new(version: u16, vault_id: [u8; 16], epoch: u32, slot: Slot) -> Keyring {
        Keyring {
            version,
            vault_id,
            epoch,
            users_serial: 0,
            pending_revocation: 0,
            patient_key_floor: 0,
            flags: 0,
            slots: vec![slot],
            macs: Vec::new(),
        }
    }

    /// The keyring's version: 1 or 2.
    pub(crate) fn version(&self) -> u16 {
        self.version
    }

    /// Makes a version-1 keyring version 2, every slot legacy (re-protected one by one).
    pub(crate) fn upgrade_to_version_2(&mut self) {
        self.version = 2;
    }

    /// The slot of `user`, if any.
    pub(crate) fn slot(&self, user: &str) -> Option<&Slot> {
        let tag = name_tag(&self.vault_id, user);
        self.slots.iter().find(|s| s.name_tag == tag)
    }

    fn slot_mut_by_tag(&mut self, tag: &[u8; 32]) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.name_tag == *tag)
    }

    /// Opens `user`'s slot with `secret`, checks the keyring's MAC, and returns the master of
    /// the current epoch and, if a master-key rotation is under way (the slot holds a seal for
    /// the next epoch), the next epoch's master.
    ///
    /// In version 2, a keyed slot checks the MAC under the keyring key it holds, before any
    /// seal is opened: a master sealed to the slot by someone who never held one is refused. A
    /// legacy slot (and a version-1 keyring) can only check the MAC under the master it is
    /// given, as format 1 did.
    pub(crate) fn unlock(&self, user: &str, secret: &SlotSecret<'_>) -> Result<Opened, Error> {
        let slot = match secret {
            SlotSecret::Passphrase(passphrase, _) => match self.slot(user) {
                Some(slot) => slot,
                None => {
                    // An unknown name costs what a wrong passphrase does, so that a service
                    // answering logins does not tell names from passphrases by its delay.
                    if let Some(kdf) = self.slots.iter().find_map(|s| s.kdf) {
                        kdf.spend_like_an_unlock(passphrase);
                    }
                    return Err(Error::UnknownUser);
                }
            },
            SlotSecret::Recovery(_) => self.slot(RECOVERY_SLOT).ok_or(Error::WrongPassphrase)?,
            SlotSecret::Access(a) => self
                .slots
                .iter()
                .find(|s| s.name_tag == a.tag)
                .ok_or(Error::UnknownUser)?,
        };
        let (access, key) = slot.open_secret(&self.vault_id, secret)?;
        let body = self.encode_body();
        if let Some(k) = &key {
            let stored = self
                .macs
                .iter()
                .find(|(v, _)| *v == k.version())
                .ok_or_else(mac_failure)?;
            if !bool::from(k.mac(&body).ct_eq(&stored.1)) {
                return Err(mac_failure());
            }
        }
        let open_master = |epoch| slot.open_seal(&self.vault_id, &access.sk, epoch);
        let current = open_master(self.epoch)?.ok_or_else(|| {
            integrity(
                "keyring",
                ProblemKind::Missing,
                "no sealed master for the current epoch",
            )
        })?;
        if key.is_none() {
            let stored = self
                .macs
                .iter()
                .find(|(v, _)| *v == 0)
                .ok_or_else(mac_failure)?;
            if !bool::from(current.keyring_mac(&body).ct_eq(&stored.1)) {
                return Err(mac_failure());
            }
        }
        let next = self
            .epoch
            .checked_add(1)
            .ok_or(Error::Internal("epoch overflow"))?;
        let pending = open_master(next)?;
        Ok(Opened {
            masters: Masters { current, pending },
            key,
            access,
        })
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

    /// Re-protects the slot `access` opened with `key` (a slot adopting a newer keyring key, or
    /// a legacy slot upgraded): only its user's secret could do this, and it was given at
    /// unlock.
    pub(crate) fn reprotect(&mut self, access: &SlotAccess, key: &KeyringKey) -> Result<(), Error> {
        let vault_id = self.vault_id;
        let slot = self
            .slot_mut_by_tag(&access.tag)
            .ok_or(Error::Internal("the unlocking slot is gone"))?;
        slot.protect(&vault_id, &access.kek, &access.sk, Some(key))
    }

    /// Removes every seal of an epoch below `epoch` from every slot.
    pub(crate) fn drop_seals_before(&mut self, epoch: u32) {
        for s in &mut self.slots {
            s.seals.retain(|seal| seal.version >= epoch);
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

    /// The users record's serial number (version 2).
    pub(crate) fn users_serial(&self) -> u64 {
        self.users_serial
    }

    /// Sets the users record's serial number, written with the keyring.
    pub(crate) fn set_users_serial(&mut self, serial: u64) {
        self.users_serial = serial;
    }

    /// The patient-key version a revocation under way brings every patient to, if any.
    pub(crate) fn pending_revocation(&self) -> Option<u32> {
        (self.pending_revocation != 0).then_some(self.pending_revocation)
    }

    /// Records a revocation under way (or its end, with `None`).
    pub(crate) fn set_pending_revocation(&mut self, target: Option<u32>) {
        self.pending_revocation = target.unwrap_or(0);
    }

    /// The lowest patient-key version a patient's record may be under (0 in version 1).
    pub(crate) fn patient_key_floor(&self) -> u32 {
        self.patient_key_floor
    }

    /// Raises the patient-key floor (never lowers it).
    pub(crate) fn raise_patient_key_floor(&mut self, floor: u32) {
        self.patient_key_floor = self.patient_key_floor.max(floor);
    }

    /// Whether `flag` is set.
    pub(crate) fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Sets or clears `flag`.
    pub(crate) fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// The keyring-key version of the slot `access` opened (0: legacy, or gone).
    pub(crate) fn held_version(&self, access: &SlotAccess) -> u32 {
        match self.slots.iter().find(|s| s.name_tag == access.tag) {
            Some(Slot {
                protection: Protection::Keyed { version },
                ..
            }) => *version,
            _ => 0,
        }
    }

    /// Whether the slot `access` opened is still in the keyring.
    pub(crate) fn has_slot_of(&self, access: &SlotAccess) -> bool {
        self.slots.iter().any(|s| s.name_tag == access.tag)
    }

    /// Removes the recovery key's slot, if any.
    pub(crate) fn remove_recovery_slot(&mut self) {
        let tag = name_tag(&self.vault_id, RECOVERY_SLOT);
        self.slots.retain(|s| s.name_tag != tag);
    }

    /// The keyring-key versions some slot holds (their MACs are needed), and whether a legacy
    /// slot remains (the MAC under the master is needed).
    pub(crate) fn versions_held(&self) -> (std::collections::BTreeSet<u32>, bool) {
        let mut held = std::collections::BTreeSet::new();
        let mut legacy = false;
        for s in &self.slots {
            match s.protection {
                Protection::Legacy => legacy = true,
                Protection::Keyed { version } => {
                    held.insert(version);
                }
            }
        }
        (held, legacy)
    }

    /// How many keyed slots hold a keyring key older than `version`.
    pub(crate) fn slots_holding_below(&self, version: u32) -> u64 {
        self.slots
            .iter()
            .filter(|s| matches!(s.protection, Protection::Keyed { version: v } if v < version))
            .count() as u64
    }

    /// Serializes the keyring with fresh MACs: under `master` (the current epoch's) in
    /// version 1, or where a legacy slot remains; under each keyring key a slot holds, from
    /// `keys`, in version 2.
    pub(crate) fn encode(
        &mut self,
        master: &EpochKey,
        keys: &KeyringKeys,
    ) -> Result<Vec<u8>, Error> {
        let mut body = self.encode_body();
        let (held, legacy) = self.versions_held();
        if self.version < 2 && !held.is_empty() {
            return Err(Error::Internal("a keyed slot in a version-1 keyring"));
        }
        let mut macs = Vec::new();
        if self.version == 1 || legacy {
            macs.push((0, master.keyring_mac(&body)));
        }
        if self.version >= 2 {
            for v in held {
                let k = keys
                    .get(&v)
                    .ok_or(Error::Internal("a keyring key a slot holds is missing"))?;
                macs.push((v, k.mac(&body)));
            }
        }
        if self.version == 1 {
            body.extend_from_slice(&macs[0].1);
        } else {
            // Bounded: at most one per slot and the master's, and slots are at most 1024.
            body.extend_from_slice(&(macs.len() as u16).to_be_bytes());
            for (v, m) in &macs {
                body.extend_from_slice(&v.to_be_bytes());
                body.extend_from_slice(m);
            }
        }
        self.macs = macs;
        Ok(body)
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.vault_id);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        if self.version >= 2 {
            b.extend_from_slice(&self.users_serial.to_be_bytes());
            b.extend_from_slice(&self.pending_revocation.to_be_bytes());
            b.extend_from_slice(&self.patient_key_floor.to_be_bytes());
            b.push(self.flags);
        }
        // Bounded by MAX_SLOTS when parsed, and slots are only added one at a time.
        b.extend_from_slice(&(self.slots.len() as u16).to_be_bytes());
        for s in &self.slots {
            b.extend_from_slice(&(s.encoded_len(self.version) as u16).to_be_bytes());
            b.extend_from_slice(&s.name_tag);
            s.encode_kind(&mut b);
            b.extend_from_slice(&s.salt);
            b.extend_from_slice(&s.public);
            b.extend_from_slice(&s.commit);
            if self.version >= 2 {
                match s.protection {
                    Protection::Legacy => {
                        b.push(PROTECTION_LEGACY);
                        b.extend_from_slice(&0u32.to_be_bytes());
                    }
                    Protection::Keyed { version } => {
                        b.push(PROTECTION_KEYED);
                        b.extend_from_slice(&version.to_be_bytes());
                    }
                }
            }
            b.extend_from_slice(&s.sk_nonce);
            b.extend_from_slice(&s.sealed);
            b.push(s.seals.len() as u8);
            for seal in &s.seals {
                encode_seal(&mut b, seal);
            }
        }
        b
    }

    /// Parses a keyring (version 1 or 2): exact lengths, range-checked KDF parameters, no
    /// trailing bytes.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Keyring, KeyringParseError> {
        use KeyringParseError::*;
        let mut r = Reader(bytes);
        if r.take(8) != Some(&MAGIC[..]) {
            return Err(Foreign);
        }
        let version = r.u16().ok_or(Malformed)?;
        if version > VERSION {
            return Err(FutureVersion(version));
        }
        if version == 0 {
            return Err(Malformed);
        }
        let vault_id = r.array().ok_or(Malformed)?;
        let epoch = r.u32().ok_or(Malformed)?;
        let (users_serial, pending_revocation, patient_key_floor, flags) = if version >= 2 {
            let fields = (
                r.u64().ok_or(Malformed)?,
                r.u32().ok_or(Malformed)?,
                r.u32().ok_or(Malformed)?,
                r.u8().ok_or(Malformed)?,
            );
            if fields.3 & !KNOWN_FLAGS != 0 {
                return Err(Malformed);
            }
            fields
        } else {
            (0, 0, 0, 0)
        };
        let n = r.u16().ok_or(Malformed)? as usize;
        if n == 0 || n > MAX_SLOTS {
            return Err(Malformed);
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u16().ok_or(Malformed)? as usize;
            let mut s = Reader(r.take(len).ok_or(Malformed)?);
            let slot = parse_slot(&mut s, version).ok_or(Malformed)?;
            if !s.0.is_empty() || len != slot.encoded_len(version) {
                return Err(Malformed);
            }
            slots.push(slot);
        }
        let macs = if version == 1 {
            vec![(0, r.array().ok_or(Malformed)?)]
        } else {
            let count = r.u16().ok_or(Malformed)? as usize;
            if count == 0 || count > slots.len() + 1 {
                return Err(Malformed);
            }
            let mut macs = Vec::with_capacity(count);
            for _ in 0..count {
                macs.push((r.u32().ok_or(Malformed)?, r.array().ok_or(Malformed)?));
            }
            macs
        };
        if !r.0.is_empty() {
            return Err(Malformed);
        }
        Ok(Keyring {
            version,
            vault_id,
            epoch,
            users_serial,
            pending_revocation,
            patient_key_floor,
            flags,
            slots,
            macs,
        })
    }
}

fn parse_seals(r: &mut Reader<'_>) -> Option<Vec<Seal>> {
    let n = r.u8()? as usize;
    if n == 0 || n > MAX_SEALS {
        return None;
    }
    let mut seals = Vec::with_capacity(n);
    for _ in 0..n {
        seals.push(Seal {
            version: r.u32()?,
            ephemeral: r.array()?,
            commit: r.array()?,
            nonce: r.array()?,
            ct: r.array()?,
        });
    }
    Some(seals)
}

fn parse_slot(r: &mut Reader<'_>, version: u16) -> Option<Slot> {
    let name_tag = r.array()?;
    let kdf = match (r.u8()?, r.u8()?, r.u32()?, r.u32()?, r.u32()?) {
        (SLOT_KIND_PASSPHRASE, KDF_ARGON2ID_13, m, t, p) => Some(KdfParams::from_stored(m, t, p)?),
        (SLOT_KIND_RECOVERY, KDF_NONE, 0, 0, 0) => None,
        _ => return None,
    };
    let salt = r.array()?;
    let public = r.array()?;
    let commit = r.array()?;
    let protection = if version >= 2 {
        match (r.u8()?, r.u32()?) {
            (PROTECTION_LEGACY, 0) => Protection::Legacy,
            (PROTECTION_KEYED, v) if v > 0 => Protection::Keyed { version: v },
            _ => return None,
        }
    } else {
        Protection::Legacy
    };
    let sk_nonce = r.array()?;
    let sealed_len = match protection {
        Protection::Legacy => 32 + TAG_LEN,
        Protection::Keyed { .. } => KEYED_LEN + TAG_LEN,
    };
    let sealed = r.take(sealed_len)?.to_vec();
    let seals = parse_seals(r)?;
    Some(Slot {
        name_tag,
        kdf,
        salt,
        public,
        commit,
        protection,
        sk_nonce,
        sealed,
        seals,
    })
}

/// What someone who can write the keyring and holds no key (or only `known`, keyring keys a
/// removed user kept) can build: `forged`, a master of their choosing, sealed to every slot's
/// public key, and the keyring's MACs recomputed where they can be (under `forged` for the
/// master's, under a known keyring key for its version), the others left as they were.
#[cfg(test)]
pub(crate) fn inject(bytes: &[u8], forged: &EpochKey, known: &[KeyringKey]) -> Vec<u8> {
    let Ok(mut k) = Keyring::parse(bytes) else {
        panic!("a keyring to inject into");
    };
    k.epoch = forged.epoch();
    k.seal_to_all(forged).expect("sealing to a public key");
    k.drop_seals_before(forged.epoch());
    let mut body = k.encode_body();
    let mut macs: Vec<(u32, [u8; 32])> = k
        .macs
        .iter()
        .map(
            |(v, old)| match (v, known.iter().find(|x| x.version() == *v)) {
                (0, _) => (0, forged.keyring_mac(&body)),
                (_, Some(key)) => (*v, key.mac(&body)),
                (_, None) => (*v, *old),
            },
        )
        .collect();
    if k.version == 1 {
        body.extend_from_slice(&macs[0].1);
        return body;
    }
    if !macs.iter().any(|(v, _)| *v == 0) {
        // Format 1's MAC, which a legacy slot would check.
        macs.push((0, forged.keyring_mac(&body)));
    }
    body.extend_from_slice(&(macs.len() as u16).to_be_bytes());
    for (v, m) in &macs {
        body.extend_from_slice(&v.to_be_bytes());
        body.extend_from_slice(m);
    }
    body
}

/// What a storage host who kept an older copy of the keyring can build: `into` with `user`'s
/// slot replaced by that user's slot from `from` (an older copy), re-encoded in `into`'s
/// version, the MACs left as they were (the placeholder of a version `into` has no MAC for is
/// recomputed by [`inject`] under a known key).
#[cfg(test)]
pub(crate) fn splice_slot(into: &[u8], from: &[u8], user: &str) -> Vec<u8> {
    let (Ok(mut k), Ok(old)) = (Keyring::parse(into), Keyring::parse(from)) else {
        panic!("two keyrings");
    };
    let tag = name_tag(&k.vault_id, user);
    let slot = old
        .slots
        .iter()
        .find(|s| s.name_tag == tag)
        .expect("the user's slot in the older copy")
        .clone();
    for s in &mut k.slots {
        if s.name_tag == tag {
            *s = slot.clone();
        }
    }
    if let Protection::Keyed { version } = slot.protection {
        if !k.macs.iter().any(|(v, _)| *v == version) {
            k.macs.push((version, [0; 32]));
        }
    }
    let mut body = k.encode_body();
    body.extend_from_slice(&(k.macs.len() as u16).to_be_bytes());
    for (v, m) in &k.macs {
        body.extend_from_slice(&v.to_be_bytes());
        body.extend_from_slice(m);
    }
    body
}

/// The keyring-key version `user`'s slot holds in the keyring `bytes` (`None`: legacy).
#[cfg(test)]
pub(crate) fn held_version(bytes: &[u8], user: &str) -> Option<u32> {
    let Ok(k) = Keyring::parse(bytes) else {
        panic!("a keyring");
    };
    match k.slot(user).expect("the user's slot").protection {
        Protection::Legacy => None,
        Protection::Keyed { version } => Some(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [1; 16];
    const PASS: &str = "correct horse battery";

    fn small() -> KdfParams {
        KdfParams::new(8, 1, 1).unwrap()
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string())
    }

    fn secret(p: &Passphrase) -> SlotSecret<'_> {
        SlotSecret::Passphrase(p, small())
    }

    fn keys(k: &KeyringKey) -> KeyringKeys {
        let mut m = KeyringKeys::new();
        m.insert(
            k.version(),
            KeyringKey::from_bytes(k.version(), *k.bytes_to_wrap()),
        );
        m
    }

    /// A keyring of `version` with one slot, "admin"; its bytes; the master; the keyring key
    /// (version 2).
    fn keyring(version: u16) -> (Keyring, Vec<u8>, EpochKey, Option<KeyringKey>) {
        let master = EpochKey::from_bytes(1, [9; 32]);
        let key = (version >= 2).then(|| KeyringKey::from_bytes(1, [7; 32]));
        let p = pass(PASS);
        let (slot, _) = Slot::create(&ID, "admin", secret(&p), &master, key.as_ref()).unwrap();
        let mut k = Keyring::new(version, ID, 1, slot);
        let held = key.as_ref().map(keys).unwrap_or_default();
        let bytes = k.encode(&master, &held).unwrap();
        (k, bytes, master, key)
    }

    fn unlock(bytes: &[u8], user: &str) -> Result<Opened, Error> {
        let k = Keyring::parse(bytes).ok().unwrap();
        k.unlock(user, &secret(&pass(PASS)))
    }

    #[test]
    fn unlock_round_trip_and_wrong_passphrase() {
        for version in [1, 2] {
            let (_, bytes, master, key) = keyring(version);
            let k = Keyring::parse(&bytes).ok().unwrap();
            assert_eq!(k.version(), version);
            let m = k.unlock("admin", &secret(&pass(PASS))).unwrap();
            assert_eq!(m.masters.current.bytes_to_wrap(), master.bytes_to_wrap());
            assert!(m.masters.pending.is_none());
            assert_eq!(
                m.key.map(|k| *k.bytes_to_wrap()),
                key.map(|k| *k.bytes_to_wrap())
            );
            assert!(matches!(
                k.unlock("admin", &secret(&pass("wrong horse battery"))),
                Err(Error::WrongPassphrase)
            ));
            assert!(matches!(
                k.unlock("bob", &secret(&pass(PASS))),
                Err(Error::UnknownUser)
            ));
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_or_detected() {
        for version in [1, 2] {
            let (_, bytes, _, _) = keyring(version);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x40;
                if let Ok(k) = Keyring::parse(&bad) {
                    assert!(
                        k.unlock("admin", &secret(&pass(PASS))).is_err(),
                        "version {version}: byte {i} altered without detection"
                    );
                }
            }
        }
    }

    #[test]
    fn crafted_kdf_parameters_are_refused_before_use() {
        // Memory field of the first slot: 8 magic + 2 + 16 + 4 (+ 8 + 4 + 4 + 1 in version 2) + slot
        // count 2 + slot len 2 + tag 32 + 2.
        for (version, extra) in [(1, 0), (2, 8 + 4 + 4 + 1)] {
            let (_, bytes, _, _) = keyring(version);
            let at = 8 + 2 + 16 + 4 + extra + 2 + 2 + 32 + 2;
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&(64u32 * 1024 * 1024).to_be_bytes());
            assert!(matches!(
                Keyring::parse(&bad),
                Err(KeyringParseError::Malformed)
            ));
        }
    }

    #[test]
    fn a_seal_with_a_low_order_ephemeral_key_is_refused() {
        let (mut k, _, master, _) = keyring(1);
        // The identity point: X25519 with it gives all zeros, whatever the slot's key.
        k.slots[0].seals[0].ephemeral = [0u8; 32];
        let bytes = k.encode(&master, &KeyringKeys::new()).unwrap();
        match unlock(&bytes, "admin") {
            Err(Error::Integrity(e)) => assert!(e.problem().contains("degenerate"), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a degenerate seal must not open"),
        }
    }

    #[test]
    fn reseal_needs_no_passphrase() {
        for version in [1, 2] {
            let (mut k, _, master, key) = keyring(version);
            let m2 = EpochKey::from_bytes(2, [10; 32]);
            k.slots[0].add_seal(&ID, &m2).unwrap();
            k.epoch = 2;
            let bytes = k
                .encode(&m2, &key.as_ref().map(keys).unwrap_or_default())
                .unwrap();
            let got = unlock(&bytes, "admin").unwrap();
            assert_eq!(got.masters.current.bytes_to_wrap(), m2.bytes_to_wrap());
            assert_ne!(got.masters.current.bytes_to_wrap(), master.bytes_to_wrap());
        }
    }

    /// A keyring of `version` with a master injected by someone who holds no key.
    fn injected_bytes(version: u16) -> (Vec<u8>, EpochKey) {
        let (_, bytes, _, _) = keyring(version);
        let forged = EpochKey::from_bytes(1, [0x66; 32]);
        (inject(&bytes, &forged, &[]), forged)
    }

    #[test]
    fn a_master_injected_by_the_host_opens_a_version_1_slot() {
        // The finding format 2 exists for (ADR 0015): in version 1 the MAC is under the
        // master, so a master chosen by the host, sealed to the slot and MAC'd under itself,
        // is accepted.
        let (bytes, forged) = injected_bytes(1);
        let got = unlock(&bytes, "admin").unwrap();
        assert_eq!(got.masters.current.bytes_to_wrap(), forged.bytes_to_wrap());
    }

    #[test]
    fn a_master_injected_by_the_host_is_refused_by_a_keyed_slot() {
        let (bytes, _) = injected_bytes(2);
        match unlock(&bytes, "admin") {
            Err(Error::Integrity(e)) => assert!(e.problem().contains("MAC"), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an injected master must not open a keyed slot"),
        }
    }

    #[test]
    fn the_keyed_mac_list_cannot_be_stripped_to_the_master_mac() {
        // Dropping the keyed MAC and leaving only a master MAC (which the injector can make)
        // does not downgrade a keyed slot to format 1's check.
        let (mut k, _, master, _) = keyring(2);
        let mut body = k.encode_body();
        let mac = master.keyring_mac(&body);
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&mac);
        k.macs.clear();
        assert!(matches!(unlock(&body, "admin"), Err(Error::Integrity(_))));
    }

    #[test]
    fn a_legacy_slot_upgrades_in_place_and_then_refuses_injection() {
        // A version-1 keyring carried into version 2: the slot stays legacy (MAC under the
        // master) until its user re-protects it with the keyring key.
        let (k1, _, master, _) = keyring(1);
        let mut k = k1.clone();
        k.version = 2;
        let bytes = k.encode(&master, &KeyringKeys::new()).unwrap();
        let mut k = Keyring::parse(&bytes).ok().unwrap();
        assert!(k.slots[0].is_legacy());
        let opened = k.unlock("admin", &secret(&pass(PASS))).unwrap();
        assert!(opened.key.is_none());
        let key = KeyringKey::from_bytes(1, [7; 32]);
        k.reprotect(&opened.access, &key).unwrap();
        assert!(!k.slots[0].is_legacy());
        let bytes = k.encode(&master, &keys(&key)).unwrap();
        let k = Keyring::parse(&bytes).ok().unwrap();
        assert_eq!(k.versions_held(), ([1].into_iter().collect(), false));
        let got = k.unlock("admin", &secret(&pass(PASS))).unwrap();
        assert_eq!(got.key.unwrap().bytes_to_wrap(), key.bytes_to_wrap());
        // No master MAC is written once no legacy slot remains: injection has nothing to
        // stand on.
        assert!(k.macs.iter().all(|(v, _)| *v != 0));
    }

    #[test]
    fn revocation_mark_and_serial_are_authenticated() {
        let (mut k, _, master, key) = keyring(2);
        let held = keys(key.as_ref().unwrap());
        k.set_pending_revocation(Some(3));
        let bytes = k.encode(&master, &held).unwrap();
        let k2 = Keyring::parse(&bytes).ok().unwrap();
        assert_eq!(k2.pending_revocation(), Some(3));
        // Clearing the mark (at 8 + 2 + 16 + 4 + 8) without the key is detected.
        let at = 8 + 2 + 16 + 4 + 8;
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&0u32.to_be_bytes());
        let k3 = Keyring::parse(&bad).ok().unwrap();
        assert_eq!(k3.pending_revocation(), None);
        assert!(matches!(
            k3.unlock("admin", &secret(&pass(PASS))),
            Err(Error::Integrity(_))
        ));
    }

    #[test]
    fn encoding_needs_every_held_keyring_key() {
        let (mut k, _, master, _) = keyring(2);
        assert!(matches!(
            k.encode(&master, &KeyringKeys::new()),
            Err(Error::Internal(_))
        ));
    }
}
