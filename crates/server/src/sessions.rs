//! Clinicians' sessions: a random bearer token (the server keeps only its SHA-256), an idle and
//! an absolute expiry, and each session's own unlocked [`Vault`]: its keys live exactly as long
//! as the session, and are zeroized when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use carnet_core::{Role, Vault};
use carnet_storage::Store;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// One logged-in clinician.
pub struct Session<S: Store> {
    pub user: String,
    pub role: Role,
    vault: RwLock<Vault<Arc<S>>>,
    created: Instant,
    last_used: Mutex<Instant>,
    /// Set when the user's access changed under the session (removed, passphrase changed):
    /// the session ends at its next use.
    revoked: AtomicBool,
}

/// Why a session cannot go on.
pub enum Refused {
    /// The user was removed or their passphrase changed since login.
    Revoked,
    /// Anything else (busy, integrity, storage).
    Error(carnet_core::Error),
}

impl<S: Store> Session<S> {
    /// The session's vault, with the vault's current keys: when another process or server ran
    /// a key operation since (a user removed, a rotation), the keys are read again first
    /// (one read of the fence per request when nothing changed). A user removed or whose
    /// passphrase changed is [`Refused::Revoked`], and the session ends.
    pub fn vault(&self) -> Result<RwLockReadGuard<'_, Vault<Arc<S>>>, Refused> {
        if self.revoked.load(Ordering::Acquire) {
            return Err(Refused::Revoked);
        }
        {
            let v = self.vault.read().unwrap_or_else(|p| p.into_inner());
            if !v.keys_changed().map_err(Refused::Error)? {
                return Ok(v);
            }
        }
        {
            let mut w = self.vault.write().unwrap_or_else(|p| p.into_inner());
            if w.keys_changed().map_err(Refused::Error)? {
                match w.reload() {
                    Ok(()) => {}
                    Err(
                        carnet_core::Error::UnknownUser
                        | carnet_core::Error::WrongPassphrase
                        | carnet_core::Error::NotPermitted(_),
                    ) => {
                        self.revoked.store(true, Ordering::Release);
                        return Err(Refused::Revoked);
                    }
                    Err(e) => return Err(Refused::Error(e)),
                }
            }
        }
        Ok(self.vault.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<S: Store> Session<S> {
    fn expires(&self, idle: Duration, absolute: Duration) -> Instant {
        let last = *self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        (last + idle).min(self.created + absolute)
    }
}

/// The live sessions, by the hash of their token.
pub struct Sessions<S: Store> {
    live: Mutex<HashMap<[u8; 32], Arc<Session<S>>>>,
    pub idle: Duration,
    pub absolute: Duration,
}

/// A new token, as given to the client once.
pub type Token = Zeroizing<String>;

impl<S: Store> Sessions<S> {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions {
            live: Mutex::default(),
            idle,
            absolute,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Session<S>>>> {
        // Poisoning: a panic while the map was held changed at most one entry; the map stays
        // usable (every entry is whole).
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `vault`; returns its token and when it expires if unused.
    pub fn open(&self, vault: Vault<Arc<S>>) -> Result<(Token, SystemTime), carnet_core::Error> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(raw.as_mut()).map_err(|_| carnet_core::Error::Random)?;
        let token =
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()));
        let now = Instant::now();
        let session = Session {
            user: vault.user().to_string(),
            role: vault.role(),
            vault: RwLock::new(vault),
            created: now,
            last_used: Mutex::new(now),
            revoked: AtomicBool::new(false),
        };
        self.live().insert(hash(&token), Arc::new(session));
        Ok((token, SystemTime::now() + self.idle.min(self.absolute)))
    }

    /// The session of `token` if it is live (and it counts as used now); an expired one is
    /// ended here.
    pub fn get(&self, token: &str) -> Option<Arc<Session<S>>> {
        let key = hash(token);
        let mut live = self.live();
        let s = live.get(&key)?;
        let now = Instant::now();
        if s.expires(self.idle, self.absolute) <= now || s.revoked.load(Ordering::Acquire) {
            live.remove(&key);
            return None;
        }
        *s.last_used.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Some(Arc::clone(s))
    }

    /// Ends the session of `token`; whether there was one.
    pub fn close(&self, token: &str) -> bool {
        self.live().remove(&hash(token)).is_some()
    }

    /// Ends every expired session: the sessions ended (their keys go with their last holder).
    pub fn sweep(&self) -> Vec<Arc<Session<S>>> {
        let now = Instant::now();
        let mut live = self.live();
        let ended: Vec<[u8; 32]> = live
            .iter()
            .filter(|(_, s)| s.expires(self.idle, self.absolute) <= now)
            .map(|(k, _)| *k)
            .collect();
        ended.iter().filter_map(|k| live.remove(k)).collect()
    }

    /// Ends every session (the server stops).
    pub fn close_all(&self) -> Vec<Arc<Session<S>>> {
        self.live().drain().map(|(_, s)| s).collect()
    }
}

/// SHA-256 of a token: what the server keeps. Tokens carry 256 random bits, so the hash
/// needs no salt and a lookup by it leaks nothing usable through timing.
fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
