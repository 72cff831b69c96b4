//! Clinicians' sessions: a random bearer token (the server keeps only its SHA-256), an idle and
//! an absolute expiry, and each session's own unlocked [`Vault`]: its keys live exactly as long
//! as the session, and are zeroized when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    pub vault: Vault<Arc<S>>,
    created: Instant,
    last_used: Mutex<Instant>,
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
            vault,
            created: now,
            last_used: Mutex::new(now),
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
        if s.expires(self.idle, self.absolute) <= now {
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

    /// Ends every expired session; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut live = self.live();
        live.retain(|_, s| s.expires(self.idle, self.absolute) > now);
        live.len()
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
