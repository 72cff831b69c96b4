//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` and `pg_ctl` from the
//! system's PostgreSQL, in a new private directory, listening on a Unix socket only (no TCP
//! port), run as the `postgres` user when the caller is root (PostgreSQL refuses to run as
//! root). Stopped and removed when dropped.
//!
//! `CARNET_TEST_POSTGRES_URL` names an existing server instead (a URI without `vault=`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The role of a throwaway server that signs in with a password (none is set: a test creates
/// it with one); every other role is trusted on the Unix socket.
pub const PASSWORD_ROLE: &str = "carnet_pw";

/// A running throwaway server (or the one `CARNET_TEST_POSTGRES_URL` names).
pub struct TestCluster {
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
    as_postgres: bool,
    base: String,
    /// The TCP port of a server started with TLS ([`TestCluster::start_tls`]).
    tls_port: Option<u16>,
}

/// Why no server could be had: PostgreSQL is not installed (tests skip, unless
/// `CARNET_REQUIRE_POSTGRES` is set), or it failed to start.
#[derive(Debug)]
pub enum Unavailable {
    /// No `initdb` found.
    NotInstalled,
    /// It is installed but did not start: the reason.
    Failed(String),
}

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    // Versions are directory names: the numerically greatest last.
    found.sort_by_key(|b| {
        b.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (asked of `id -u`: this crate forbids `unsafe`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}

impl TestCluster {
    /// Starts a server (or uses `CARNET_TEST_POSTGRES_URL`).
    pub fn start() -> Result<TestCluster, Unavailable> {
        Self::start_with(false)
    }

    /// Starts a server of its own (never `CARNET_TEST_POSTGRES_URL`) that also listens on
    /// 127.0.0.1 with TLS only, its certificate (for `localhost`) signed by a certificate
    /// authority made for it ([`TestCluster::tls_file`]: `ca.pem`, and `other-ca.pem`, which
    /// signed nothing).
    pub fn start_tls() -> Result<TestCluster, Unavailable> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<TestCluster, Unavailable> {
        if let (false, Ok(url)) = (tls, std::env::var("CARNET_TEST_POSTGRES_URL")) {
            return Ok(TestCluster {
                dir: None,
                bin: None,
                as_postgres: false,
                base: url,
                tls_port: None,
            });
        }
        let bin = bin_dir().ok_or(Unavailable::NotInstalled)?;
        let as_postgres = is_root();
        let mut r = [0u8; 8];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        r[..4].copy_from_slice(&nanos.to_le_bytes());
        r[4..].copy_from_slice(&std::process::id().to_le_bytes());
        let dir = std::env::temp_dir().join(format!("carnet-pg-{:016x}", u64::from_le_bytes(r)));
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Unavailable::Failed(format!("{what}: {e}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| fail("cannot create the cluster directory", &e))?;
        }
        let mut cluster = TestCluster {
            dir: Some(dir.clone()),
            bin: Some(bin.clone()),
            as_postgres,
            base: String::new(),
            tls_port: None,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(Unavailable::Failed(
                    "cannot give the directory to the postgres user".into(),
                ));
            }
        }
        let data = dir.join("data");
        cluster.run(
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "carnet".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // One role signs in with a password (scram-sha-256), for tests of credentials; every
        // other role is trusted on the socket, and on 127.0.0.1 over TLS only.
        let hba = data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "local all {PASSWORD_ROLE} scram-sha-256\nlocal all all trust\nhostssl all all 127.0.0.1/32 trust\n"
            ),
        )
        .map_err(|e| fail("cannot write pg_hba.conf", &e))?;
        if tls {
            cluster.make_certificates()?;
            cluster.tls_port = Some(free_port().map_err(|e| fail("no free port", &e))?);
        }
        let options = cluster.server_options();
        cluster.run(
            &bin.join("pg_ctl"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                dir.join("server.log").as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )?;
        cluster.base = format!(
            "postgresql://carnet@%2F{}/postgres",
            dir.display()
                .to_string()
                .trim_start_matches('/')
                .replace('/', "%2F")
        );
        Ok(cluster)
    }

    /// Starts a server, or returns `None` after saying why on stderr when PostgreSQL is not
    /// installed and `CARNET_REQUIRE_POSTGRES` is not set (a failure to start always panics).
    pub fn start_or_skip(test: &str) -> Option<TestCluster> {
        match TestCluster::start() {
            Ok(c) => Some(c),
            Err(Unavailable::NotInstalled)
                if std::env::var_os("CARNET_REQUIRE_POSTGRES").is_none() =>
            {
                eprintln!(
                    "{test}: skipped, PostgreSQL is not installed (apt-get install postgresql)"
                );
                None
            }
            Err(e) => panic!("{test}: no PostgreSQL server: {e:?}"),
        }
    }

    /// A connection URI for the vault `vault` on this server.
    pub fn uri(&self, vault: &str) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}vault={vault}", self.base)
    }

    /// The server's settings: the socket in its directory; no TCP port, or 127.0.0.1 with TLS.
    fn server_options(&self) -> String {
        let dir = self.dir.as_deref().unwrap_or(Path::new("/nonexistent"));
        let mut o = format!("-c fsync=on -c max_connections=200 -k {}", dir.display());
        match self.tls_port {
            None => o.push_str(" -c listen_addresses=''"),
            Some(port) => o.push_str(&format!(
                " -c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                dir.join("tls").display()
            )),
        }
        o
    }

    /// Makes a certificate authority, a server certificate for `localhost` it signs, and
    /// another authority that signs nothing, with the system's `openssl`.
    fn make_certificates(&self) -> Result<(), Unavailable> {
        let dir = self
            .dir
            .as_deref()
            .unwrap_or(Path::new("/nonexistent"))
            .join("tls");
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Unavailable::Failed(format!("{what}: {e}"));
        std::fs::create_dir(&dir).map_err(|e| fail("cannot create tls/", &e))?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| fail("cannot write ext.cnf", &e))?;
        let ca = |key: &str, pem: &str| -> Vec<String> {
            format!("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {pem} -days 2 -subj /CN=carnet-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
                .split(' ').map(String::from).collect()
        };
        let split = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        for args in [
            ca("ca.key", "ca.pem"),
            ca("other-ca.key", "other-ca.pem"),
            split("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=localhost"),
            split("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf"),
        ] {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| fail("cannot run openssl (apt-get install openssl)", &e))?;
            if !out.status.success() {
                return Err(Unavailable::Failed(format!(
                    "openssl {} failed: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        if self.as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(Unavailable::Failed("cannot give tls/ to postgres".into()));
            }
        }
        Ok(())
    }

    /// A file of the TLS server's certificates (`ca.pem`, `other-ca.pem`).
    pub fn tls_file(&self, name: &str) -> Option<PathBuf> {
        self.tls_port?;
        Some(self.dir.as_deref()?.join("tls").join(name))
    }

    /// A URI for the vault `vault` over TCP and TLS to `host` (`localhost` or `127.0.0.1`),
    /// with the extra parameters `params` (`sslmode=…`).
    pub fn tls_uri(&self, host: &str, params: &str, vault: &str) -> Option<String> {
        let port = self.tls_port?;
        Some(format!(
            "postgresql://carnet@{host}:{port}/postgres?{params}&vault={vault}"
        ))
    }

    /// A connection URI for the vault `vault` in the database `database`, as `user`.
    pub fn uri_as(&self, user: &str, database: &str, vault: &str) -> String {
        let (base, query) = self.base.split_once('?').unwrap_or((&self.base, ""));
        let (server, _) = base.rsplit_once('/').unwrap_or((base, ""));
        let server = match server.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{user}@{host}")
            }
            None => server.to_string(),
        };
        let sep = if query.is_empty() { "?" } else { "&" };
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{server}/{database}{query}{sep}vault={vault}")
    }

    /// A connection to `database` as the server's superuser.
    fn superuser(&self, database: &str) -> Result<postgres::Client, String> {
        self.connect_as("carnet", database)
    }

    /// A connection to `database` as `user` (trusted on the socket), for a test to hold.
    pub fn connect_as(&self, user: &str, database: &str) -> Result<postgres::Client, String> {
        let uri = self.uri_as(user, database, "x");
        let uri = uri.rsplit_once("vault=x").map_or(uri.as_str(), |(u, _)| u);
        postgres::Client::connect(uri.trim_end_matches(['?', '&']), postgres::NoTls)
            .map_err(|e| format!("cannot connect: {e}"))
    }

    /// Runs `sql` (statements separated by `;`) as the server's superuser, in `database`.
    pub fn execute(&self, database: &str, sql: &str) -> Result<(), String> {
        self.execute_as("carnet", database, sql)
    }

    /// Runs `sql` as `user` (trusted on the socket), in `database`.
    pub fn execute_as(&self, user: &str, database: &str, sql: &str) -> Result<(), String> {
        let mut client = self.connect_as(user, database)?;
        client
            .batch_execute(sql)
            .map_err(|e| match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            })
    }

    /// The one number `sql` returns (a `count(*)`, say), run as the superuser in `database`.
    pub fn query_i64(&self, database: &str, sql: &str) -> Result<i64, String> {
        let mut client = self.superuser(database)?;
        let row = client.query_one(sql, &[]).map_err(|e| e.to_string())?;
        row.try_get(0).map_err(|e| e.to_string())
    }

    /// The one number `sql` returns, run as `user` in `database` (what that role may see).
    pub fn query_i64_as(&self, user: &str, database: &str, sql: &str) -> Result<i64, String> {
        let mut client = self.connect_as(user, database)?;
        let row = client
            .query_one(sql, &[])
            .map_err(|e| match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            })?;
        row.try_get(0).map_err(|e| e.to_string())
    }

    /// Restarts the server at once, as a crash would (`pg_ctl -m immediate restart`): every
    /// connection is cut, and what was committed survives.
    pub fn restart(&self) -> Result<(), String> {
        let (Some(dir), Some(bin)) = (&self.dir, &self.bin) else {
            return Err("an external server is not restarted".into());
        };
        let data = dir.join("data");
        let options = self.server_options();
        self.run(
            &bin.join("pg_ctl"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                dir.join("server.log").as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "restart".as_ref(),
            ],
        )
        .map_err(|e| format!("{e:?}"))
    }

    /// The server's directory (`None` for an external server).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn run(&self, program: &Path, args: &[&std::ffi::OsStr]) -> Result<(), Unavailable> {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        let out = c
            .output()
            .map_err(|e| Unavailable::Failed(format!("cannot run {}: {e}", program.display())))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Unavailable::Failed(format!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let (Some(dir), Some(bin)) = (&self.dir, &self.bin) {
            let data = dir.join("data");
            let _ = self.run(
                &bin.join("pg_ctl"),
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "stop".as_ref(),
                ],
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
