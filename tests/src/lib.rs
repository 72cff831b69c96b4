//! Helpers for Carnet's end-to-end tests: run the built `carnet` binary against a vault in a
//! temporary directory, and look at the vault's raw files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

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
        std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
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
        let mut c = Command::new(carnet_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("CARNET_VAULT", &self.dir)
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
