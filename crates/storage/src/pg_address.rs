//! Where a PostgreSQL vault is (ADR 0018): a libpq connection URI with `vault=NAME` among its
//! parameters, the password from a file (never from the URI), and the TLS that `sslmode` asks
//! for.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use postgres::config::{Host, SslMode};
use postgres::Config;
use zeroize::Zeroizing;

use crate::StoreError;

/// What `sslmode` asks of the connection, as libpq reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// `disable`: never TLS.
    Disable,
    /// `allow` and `prefer` (libpq's default): TLS when the server offers it, without checking
    /// its certificate (as libpq; `allow` tries TLS first too).
    Prefer,
    /// `require`: TLS or nothing; the certificate is checked against the root certificate
    /// when one is found (as libpq), else not.
    Require,
    /// `verify-ca`: TLS with a certificate signed by the root certificate.
    VerifyCa,
    /// `verify-full`: `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Option<TlsMode> {
        Some(match value {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A PostgreSQL vault's address: the server's settings, the vault's name in the database, and
/// how to protect the connection. Holds the database password (once [`PgAddress::use_password_file`]
/// or [`PgAddress::use_pgpass`] found one) and shows none of it.
#[derive(Clone)]
pub struct PgAddress {
    pub(crate) config: Config,
    pub(crate) vault: String,
    pub(crate) tls: TlsMode,
    /// `sslrootcert`, when the URI names one.
    pub(crate) root_cert: Option<PathBuf>,
    has_password: bool,
}

impl std::fmt::Debug for PgAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAddress")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

/// Whether `text` is a PostgreSQL connection URI rather than a directory.
pub fn is_postgres_uri(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// libpq's default socket directory on Debian.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

fn bad(why: &str) -> StoreError {
    StoreError::Unavailable(format!("invalid PostgreSQL URI: {why}"))
}

fn no_password_here() -> StoreError {
    bad("a password never goes in the URI (put it in ~/.pgpass, PGPASSFILE or a file named by --db-password-file)")
}

impl PgAddress {
    /// Reads a connection URI: libpq's syntax (`postgresql://user@host:port/db?sslmode=…`),
    /// with `vault=NAME` among the parameters (1 to 64 ASCII letters, digits, `-` or `_`). A
    /// password in it is refused: URIs end up in shell histories and process lists.
    pub fn parse(uri: &str) -> Result<PgAddress, StoreError> {
        if !is_postgres_uri(uri) {
            return Err(bad("it must start with postgresql:// or postgres://"));
        }
        let (base, query) = match uri.split_once('?') {
            Some((b, q)) => (b, q),
            None => (uri, ""),
        };
        let mut vault = None;
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            // The driver %-decodes names: one Carnet did not read as it would is refused.
            if param.split('=').next().is_some_and(|k| k.contains('%')) {
                return Err(bad("a parameter name with a %-escape"));
            }
            match param.split_once('=') {
                Some(("vault", v)) => vault = Some(v.to_string()),
                Some(("password", _)) => return Err(no_password_here()),
                Some(("sslmode", v)) => tls = TlsMode::parse(v).ok_or_else(|| {
                    bad("sslmode must be disable, allow, prefer, require, verify-ca or verify-full")
                })?,
                Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(percent_decode(v)?)),
                // One server per vault: a password looked up for one host is never sent to
                // another (libpq looks it up per host; Carnet names one).
                Some(("host" | "hostaddr" | "load_balance_hosts", _)) => {
                    return Err(bad(
                        "name the server in the URI's authority (one host), not with host= or hostaddr=",
                    ))
                }
                Some((
                    "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" | "passfile",
                    _,
                )) => {
                    return Err(bad(&format!(
                        "the parameter {} is not supported by Carnet",
                        param.split('=').next().unwrap_or("")
                    )))
                }
                _ => rest.push(param),
            }
        }
        let Some(vault) = vault else {
            return Err(bad("it names no vault (add ?vault=NAME)"));
        };
        if vault.is_empty()
            || vault.len() > 64
            || !vault
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "the vault name must be 1 to 64 ASCII letters, digits, - or _",
            ));
        }
        let authority = base
            .split_once("://")
            .map_or("", |(_, r)| r.split('/').next().unwrap_or(""));
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return Err(no_password_here());
        }
        let uri = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config =
            Config::from_str(&uri).map_err(|_| bad("not a connection URI libpq accepts"))?;
        if config.get_password().is_some() {
            return Err(no_password_here());
        }
        match config.get_hosts().len() {
            0 => {
                // libpq's default: the system's socket directory.
                config.host_path(DEFAULT_SOCKET_DIR);
            }
            1 => {}
            _ => return Err(bad("it names several hosts: Carnet connects to one")),
        }
        if !config.get_hostaddrs().is_empty() {
            return Err(bad(
                "hostaddr is not supported: name the server as the host",
            ));
        }
        if config.get_user().is_none() {
            // libpq's default, and the one the password file is searched for.
            config.user(&whoami::username().unwrap_or_else(|_| "postgres".into()));
        }
        let mut address = PgAddress {
            config,
            vault,
            tls,
            root_cert,
            has_password: false,
        };
        // TLS is chosen by the connector Carnet builds from `tls`; the driver only asks for it,
        // and never on a Unix socket (as libpq).
        let mode = match tls {
            _ if address.local_only() => SslMode::Disable,
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        address.config.ssl_mode(mode);
        Ok(address)
    }

    /// The vault's name in its database.
    pub fn vault_name(&self) -> &str {
        &self.vault
    }

    /// What `sslmode` asked for.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// Whether every host is a Unix socket (no TLS there, as with libpq).
    pub(crate) fn local_only(&self) -> bool {
        let hosts = self.config.get_hosts();
        !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)))
    }

    /// A name for this vault that holds no secret: `postgresql://user@host:port/db?vault=NAME`
    /// (for messages, and for what a machine remembers of the vault).
    pub fn location(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => percent_encode(&p.to_string_lossy()),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("");
        format!(
            "postgresql://{}@{host}:{port}/{}?vault={}",
            percent_encode(user),
            percent_encode(self.database()),
            self.vault
        )
    }

    fn database(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("")
    }

    /// Takes the database password from the first line of `path`, which must be private to
    /// its owner (as a passphrase file).
    pub fn use_password_file(&mut self, path: &Path) -> Result<(), StoreError> {
        let text = read_private(path, "database password file")?;
        let line = text.split(['\n', '\r']).next().unwrap_or("");
        if line.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "the database password file {} is empty",
                path.display()
            )));
        }
        self.set_password(line.as_bytes());
        Ok(())
    }

    /// Looks the database password up in libpq's password file (`PGPASSFILE`, else
    /// `~/.pgpass`) unless one was given: the first line whose host, port, database and user
    /// match (`*` matches anything). No file, or no line, is no password (the server may not
    /// ask for one). A file others can read is refused, where libpq ignores it with a warning.
    pub fn use_pgpass(&mut self) -> Result<(), StoreError> {
        if self.has_password {
            return Ok(());
        }
        let path = match std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                Some(h) => PathBuf::from(h).join(".pgpass"),
                None => return Ok(()),
            },
        };
        if !path.is_file() {
            return Ok(());
        }
        let text = read_private(&path, "PostgreSQL password file")?;
        self.password_from_pgpass(&text);
        Ok(())
    }

    /// The first matching line of a password file, if any, as the password.
    fn password_from_pgpass(&mut self, text: &str) {
        let port = self
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let hosts: Vec<String> = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => vec![h.clone()],
            // libpq matches a socket by its directory, and as `localhost` only in the default
            // directory (a socket elsewhere, in /tmp say, is not the local server's).
            Some(Host::Unix(p)) => {
                let dir = p.to_string_lossy().into_owned();
                let default = [DEFAULT_SOCKET_DIR, "/run/postgresql"]
                    .iter()
                    .any(|d| Path::new(d) == p.as_path());
                let mut names = vec![dir];
                if default {
                    names.push("localhost".into());
                }
                names
            }
            None => vec!["localhost".into()],
        };
        let user = self.config.get_user().unwrap_or("").to_string();
        let database = self.database().to_string();
        let found = text.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let fields = pgpass_fields(line)?;
            let matches = |(text, wild): &(Zeroizing<String>, bool), value: &str| {
                *wild || text.as_str() == value
            };
            let host_ok = fields[0].1 || hosts.iter().any(|h| *h == *fields[0].0);
            (host_ok
                && matches(&fields[1], &port)
                && matches(&fields[2], &database)
                && matches(&fields[3], &user))
            .then(|| Zeroizing::new(fields[4].0.to_string()))
        });
        if let Some(password) = found {
            self.set_password(password.as_bytes());
        }
    }

    fn set_password(&mut self, password: &[u8]) {
        // The driver keeps its own copy for reconnections, for the life of the store: the
        // database password opens ciphertext only (docs/key-management.md, "On PostgreSQL").
        self.config.password(password);
        self.has_password = true;
    }
}

/// The five fields of a password-file line, `\:` and `\\` unescaped, and whether each is a
/// wildcard (an unescaped `*`); as libpq, an unescaped `:` ends the password too (`None`: not
/// a line of five fields).
fn pgpass_fields(line: &str) -> Option<[(Zeroizing<String>, bool); 5]> {
    let mut fields: Vec<(Zeroizing<String>, bool)> = vec![(Zeroizing::new(String::new()), false)];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut()?.0.push(n);
                    fields.last_mut()?.1 = true;
                }
            }
            ':' if fields.len() < 5 => fields.push((Zeroizing::new(String::new()), false)),
            ':' => break,
            c => fields.last_mut()?.0.push(c),
        }
    }
    let fields: [(Zeroizing<String>, bool); 5] = fields.try_into().ok()?;
    // `escaped` becomes "is a wildcard": exactly `*`, unescaped.
    Some(fields.map(|(text, escaped)| {
        let wild = !escaped && text.as_str() == "*";
        (text, wild)
    }))
}

/// The content of a file that must be private to its owner (mode without group or other bits).
fn read_private(path: &Path, what: &str) -> Result<Zeroizing<String>, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let cannot = |e: std::io::Error| {
        StoreError::Unavailable(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let f = File::open(path).map_err(cannot)?;
    let meta = f.metadata().map_err(cannot)?;
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        return Err(StoreError::Unavailable(format!(
            "the {what} {} can be read or changed by other users (mode {mode:03o}): chmod 600 it",
            path.display()
        )));
    }
    let mut text = Zeroizing::new(String::new());
    f.take(1 << 20).read_to_string(&mut text).map_err(cannot)?;
    Ok(text)
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("a %-escape that is not UTF-8"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_its_vault_and_no_password() {
        let a = PgAddress::parse("postgresql://clinic@db.example:6543/carnet?vault=rue-des-lilas")
            .expect("parses");
        assert_eq!(a.vault_name(), "rue-des-lilas");
        assert_eq!(
            a.location(),
            "postgresql://clinic@db.example:6543/carnet?vault=rue-des-lilas"
        );
        assert_eq!(a.tls_mode(), TlsMode::Prefer);
        for uri in [
            "postgresql://clinic:secret@db/carnet?vault=a",
            "postgresql://clinic@db/carnet?vault=a&password=secret",
            "postgresql://db/carnet",
            "postgresql://db/carnet?vault=",
            "postgresql://db/carnet?vault=a%20b",
            "postgresql://db/carnet?vault=a&sslmode=sometimes",
            "postgresql://db/carnet?vault=a&sslcert=/x",
            "postgresql://a,b/carnet?vault=a",
            "postgresql://db/carnet?vault=a&host=evil",
            "postgresql://db/carnet?vault=a&hostaddr=10.0.0.1",
            "postgresql://db/carnet?vault=a&ssl%6Dode=disable",
            "/srv/carnet",
        ] {
            let e = PgAddress::parse(uri).expect_err(uri);
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let a = PgAddress::parse("postgres://u@%2Ftmp%2Fpg/db?vault=v&sslmode=verify-full")
            .expect("a socket");
        assert!(a.local_only());
        assert_eq!(a.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(a.location(), "postgresql://u@%2Ftmp%2Fpg:5432/db?vault=v");
    }

    #[test]
    fn password_file_lines_unescape_and_need_five_fields() {
        let f = pgpass_fields(r"db\:1:5432:*:clinic:pa\\ss\:wo:rd").expect("five");
        assert_eq!(f[0].0.as_str(), "db:1");
        assert!(f[2].1, "* is a wildcard");
        assert_eq!(
            f[4].0.as_str(),
            r"pa\ss:wo",
            "an unescaped : ends the password"
        );
        let f = pgpass_fields(r"\*:5432:db:u:p").expect("five");
        assert!(!f[0].1, "an escaped * is a star");
        assert!(pgpass_fields("db:5432:*:clinic").is_none());
    }

    #[test]
    fn the_password_file_is_searched_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        std::fs::write(
            &path,
            "# comment\nother:5432:*:*:nope\ndb.example:6543:carnet:clinic:s3cret\n*:*:*:*:fallback\n",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut a =
            PgAddress::parse("postgresql://clinic@db.example:6543/carnet?vault=v").expect("parses");
        let text = read_private(&path, "x").expect("private");
        a.password_from_pgpass(&text);
        assert_eq!(a.config.get_password(), Some(&b"s3cret"[..]));
        let mut b =
            PgAddress::parse("postgresql://clinic@db.example/carnet?vault=v").expect("parses");
        b.password_from_pgpass(&text);
        assert_eq!(
            b.config.get_password(),
            Some(&b"fallback"[..]),
            "another port"
        );
        let mut c =
            PgAddress::parse("postgresql://clinic@%2Fvar%2Frun%2Fpostgresql/carnet?vault=v")
                .expect("parses");
        c.password_from_pgpass("localhost:5432:carnet:clinic:local\n");
        assert_eq!(
            c.config.get_password(),
            Some(&b"local"[..]),
            "the default socket is localhost"
        );
        let mut d = PgAddress::parse("postgresql://clinic@%2Ftmp/carnet?vault=v").expect("parses");
        d.password_from_pgpass("localhost:5432:carnet:clinic:local\n");
        assert_eq!(
            d.config.get_password(),
            None,
            "a socket in /tmp is not localhost"
        );
        let mut e = PgAddress::parse("postgresql://clinic@/carnet?vault=v").expect("no host");
        e.password_from_pgpass("localhost:5432:carnet:clinic:local\n");
        assert_eq!(
            e.config.get_password(),
            Some(&b"local"[..]),
            "no host: the default socket"
        );
        std::fs::write(dir.path().join("pw"), "first line\nsecond\n").expect("write");
        std::fs::set_permissions(
            dir.path().join("pw"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        a.use_password_file(&dir.path().join("pw"))
            .expect("a first line");
        assert_eq!(a.config.get_password(), Some(&b"first line"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read_private(&path, "PostgreSQL password file").expect_err("readable by others");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("s3cret"));
    }
}
