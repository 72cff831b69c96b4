//! `carnet serve`: opens the vault's store (no passphrase) and hands it to carnet-server.

use std::sync::Arc;
use std::time::Duration;

use carnet_server::{Config, Identity, Transport};
use carnet_storage::{relay, Location, RelayHost};

use crate::args::{Global, ServeArgs};
use crate::error::{CliError, Exit};
use crate::state::{Memory, Seen};

pub fn run(g: &Global, a: ServeArgs) -> Result<(), CliError> {
    if a.insecure_http && !a.listen.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "--insecure-http is only allowed on a loopback address (127.0.0.1 or ::1), not {}",
            a.listen.ip()
        )));
    }
    let transport = if a.insecure_http {
        Transport::InsecureHttp
    } else {
        let identity = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Identity::from_files(cert, key),
            _ => {
                let dir = crate::state::state_dir().ok_or_else(|| {
                    CliError::failure("no state directory to keep the server's certificate in")
                        .hint("set CARNET_STATE_DIR, or pass --tls-cert and --tls-key")
                })?;
                Identity::generated_in(&dir.join("serve"), a.listen.ip())
            }
        };
        Transport::Tls(identity.map_err(|e| CliError::failure(e.to_string()))?)
    };
    let location = crate::context::vault_location(g)?;
    let store = Arc::new(RelayHost::new(
        crate::context::open_store_to_serve(&location, g)?,
        carnet_core::STORE_SPACES,
        carnet_core::STORE_DOCUMENTS,
    ));
    // A directory is this process's alone while it serves: the administrator's commands reach
    // it through the local relay (a socket in the vault's directory, for its owner only).
    let _relay = match &location {
        Location::Dir(dir) => match relay::listen(dir, Arc::clone(&store)) {
            Ok(listening) => Some(listening),
            Err(e) => {
                eprintln!(
                    "carnet: warning: the administrator's commands (backup, key, user, verify) cannot reach this vault while it is served: {e}"
                );
                None
            }
        },
        Location::Postgres(_) => None,
    };
    let mut config = Config::new(a.listen, transport);
    config.idle_timeout = match a.idle_seconds {
        Some(s) => Duration::from_secs(s.max(1)),
        None => Duration::from_secs(a.idle_minutes.max(1) * 60),
    };
    config.absolute_timeout = Duration::from_secs(a.session_hours.max(1) * 3600);
    config.concurrent_unlocks = a.concurrent_logins.max(1);
    config.trusted_proxy = a.trust_proxy;
    config.log_file = a.log_file;
    // What this machine saw of the vault (ADR 0013): shared with the command line, so that a
    // vault put back while the server was stopped is refused, and the desks know what it wrote.
    config.memory = carnet_core::vault_id(store.as_ref())
        .ok()
        .flatten()
        .and_then(|id| Memory::of(id, &location))
        .map(|m| Box::new(Remembered(m)) as Box<dyn carnet_server::HeadMemory>);
    carnet_server::serve(store, config, |line| eprintln!("{line}")).map_err(|e| match e {
        carnet_server::ServeError::Usage(m) => CliError::usage(m),
        carnet_server::ServeError::Listen(..) => CliError::new(Exit::InUse, e.to_string()),
        other => CliError::failure(other.to_string()),
    })
}

/// The command line's memory of the vault, for the server.
struct Remembered(Memory);

impl carnet_server::HeadMemory for Remembered {
    fn seen(&self) -> Option<carnet_core::Checkpoint> {
        match self.0.seen() {
            Ok(seen) => seen,
            Err(why) => {
                eprintln!("carnet: warning: {why}: a rollback of the vault while the server was stopped would go unnoticed");
                None
            }
        }
    }

    fn remember(&self, head: &carnet_core::Checkpoint) {
        if let Err(why) = self.0.remember(head, &Seen::default()) {
            eprintln!("carnet: warning: cannot remember the vault's state: {why}");
        }
    }
}
