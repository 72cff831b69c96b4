//! Helpers for Carnet's end-to-end tests: run the built `carnet` binary against a vault in a
//! temporary directory, and look at the vault's raw files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use carnet_core::{NoteId, Passphrase, Vault};
use carnet_storage::SledStore;
use serde_json::json;

pub mod serve;

/// `carnet init` with the smallest KDF settings, for fast tests.
pub const INIT: [&str; 7] = [
    "init",
    "--kdf-memory-mib",
    "8",
    "--kdf-iterations",
    "1",
    "--kdf-parallelism",
    "1",
];

/// The passphrase of test vaults.
pub const PASS: &str = "correct horse battery staple";

/// The `carnet` binary of this build. It is (re)built on first use with the same profile, so
/// that these tests never run a stale binary (cargo does not rebuild another package's binary
/// for a test crate by itself).
pub fn carnet_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test binary> -> target/<profile>/carnet
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "carnet-cli", "--bin", "carnet"]);
        // What cargo sets for this test crate is not the build's business: build scripts that
        // watch it (ring's watches CARGO_MANIFEST_DIR) would rebuild their crate every time
        // a build from a shell and one from here alternate.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k == "CARGO_MANIFEST_DIR"
                || k == "CARGO_MANIFEST_PATH"
                || k.starts_with("CARGO_PKG_")
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&*k);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building carnet failed");
        profile_dir.join(format!("carnet{}", std::env::consts::EXE_SUFFIX))
    })
}

/// The outcome of one run of `carnet`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout_str()))
    }

    /// Asserts the exit code, showing stderr when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        self
    }
}

/// A vault in a temporary directory, with a passphrase file.
pub struct TestVault {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub pass_file: PathBuf,
}

impl TestVault {
    /// A new, not yet initialized, vault location.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let pass_file = tmp.path().join("pass");
        write_secret(&pass_file, format!("{PASS}\n"));
        TestVault {
            tmp,
            dir,
            pass_file,
        }
    }

    /// An initialized vault (small KDF parameters, for speed).
    pub fn init() -> Self {
        let v = Self::new();
        v.run(&INIT).expect(0);
        v
    }

    /// A `carnet` command with this vault and passphrase file, and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(&[], args)
    }

    /// Like [`TestVault::cmd`], but run through `wrapper` (a program and its arguments, to
    /// which the path of `carnet` and then `args` are appended), such as a tracer.
    pub fn cmd_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = match wrapper.split_first() {
            None => Command::new(carnet_bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(carnet_bin());
                c
            }
        };
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("CARNET_VAULT", &self.dir)
            .env("CARNET_STATE_DIR", self.state_dir())
            .env("CARNET_PASSPHRASE_FILE", &self.pass_file)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_cmd(self.cmd(args), Some(stdin))
    }

    /// Adds a note through stdin and returns its id.
    pub fn add_note(&self, patient: &str, body: &str, extra: &[&str]) -> String {
        let mut args = vec!["note", "add", patient];
        args.extend_from_slice(extra);
        let r = self.run_stdin(&args, body.as_bytes()).expect(0);
        let id = r.stdout_str().trim().to_string();
        assert_eq!(id.len(), 32, "a note id is 32 hex digits: {id:?}");
        id
    }

    /// Where this test's machine remembers the vaults it saw (`CARNET_STATE_DIR`).
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// Forgets what this test's machine saw of its vaults, as a machine that never saw them:
    /// for tests that put an older copy back on purpose to prove something else.
    pub fn forget_state(&self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
    }

    /// Every regular file under the vault directory, with its contents.
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&self.dir)
    }
}

impl Default for TestVault {
    fn default() -> Self {
        Self::new()
    }
}

pub fn run_cmd(mut c: Command, stdin: Option<&[u8]>) -> Run {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).unwrap();
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a panic: {stderr}"
    );
    Run {
        code: status.code().expect("carnet was killed by a signal"),
        stdout,
        stderr,
    }
}

/// Writes a file that holds a secret (a passphrase, a recovery key) as a careful administrator
/// would: readable by its owner only, as `carnet` requires of such files.
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every regular file under `dir`, recursively, with its contents.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A vault with `patients` patients of `notes` notes each, imported in one go.
pub fn populated(patients: usize, notes: usize) -> TestVault {
    let v = TestVault::init();
    let file = v.tmp.path().join("seed.jsonl");
    let mut lines = String::new();
    for p in 0..patients {
        for n in 0..notes {
            lines += &json!({"patient_id": format!("P{p:03}"), "name": format!("Name {p}"),
                             "body": format!("patient {p} note {n}: lorem ipsum dolor sit amet")})
            .to_string();
            lines.push('\n');
        }
    }
    std::fs::write(&file, lines).unwrap();
    v.run(&["import", file.to_str().unwrap()]).expect(0);
    v
}

pub type Contents = BTreeMap<(String, NoteId, u32), Vec<u8>>;

/// The vault at `dir`, unlocked through the library after a clean `verify`; panics, naming
/// `context`, on any error or integrity problem.
pub fn open_verified(dir: &Path, pass: &str, context: &str) -> Vault<SledStore> {
    let v = Vault::unlock(
        SledStore::open(dir).unwrap_or_else(|e| panic!("{context}: open: {e:?}")),
        "admin",
        &Passphrase::new(pass.into()),
    )
    .unwrap_or_else(|e| panic!("{context}: unlock: {e}"));
    let r = v
        .verify(&mut |_, _| {})
        .unwrap_or_else(|e| panic!("{context}: verify: {e}"));
    assert!(r.is_ok(), "{context}: {:?}", r.problems);
    v
}

/// Every version of every note of a vault that verifies; panics, naming `context`, otherwise.
pub fn read_all(dir: &Path, pass: &str, context: &str) -> Contents {
    let v = open_verified(dir, pass, context);
    let fail = |e: carnet_core::Error| -> ! { panic!("{context}: {e}") };
    let mut out = BTreeMap::new();
    for p in v.patients().unwrap_or_else(|e| fail(e)) {
        for n in v.notes(&p.id).unwrap_or_else(|e| fail(e)) {
            for h in v.note_history(&p.id, &n.id).unwrap_or_else(|e| fail(e)) {
                let body = h
                    .body
                    .unwrap_or_else(|| panic!("{context}: a version without body"));
                out.insert(
                    (p.id.as_str().to_string(), h.id, h.version),
                    body.as_bytes().to_vec(),
                );
            }
        }
    }
    out
}

/// Every version of every note of a vault that must be sound.
pub fn contents(dir: &Path, pass: &str) -> Contents {
    read_all(dir, pass, "reading the vault")
}

/// Panics, naming `context`, unless the vault verifies and every version in `expected` reads
/// back identical (reading only those: the vault may hold many more).
pub fn check(dir: &Path, expected: &Contents, context: &str) {
    let v = open_verified(dir, PASS, context);
    for ((p, n, version), body) in expected {
        let id = carnet_core::PatientId::new(p.clone()).unwrap();
        let h = v
            .note_history(&id, n)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let got = h
            .iter()
            .find(|x| x.version == *version)
            .and_then(|x| x.body.as_ref());
        assert_eq!(
            got.map(|b| b.as_bytes()),
            Some(&body[..]),
            "{context}: {p} {n:?}"
        );
    }
}
