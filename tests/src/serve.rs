//! A real `carnet serve` on 127.0.0.1 (port chosen by the system), and a real HTTPS client
//! (ureq over rustls) that trusts exactly the certificate whose fingerprint the server printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::TestVault;

/// A running server; stopped (SIGKILL) when dropped, unless [`Server::stop`] stopped it.
pub struct Server {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT` (or `http://`).
    pub url: String,
    /// The fingerprint the server printed (HTTPS).
    pub fingerprint: Option<String>,
    /// Every line the server wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

/// An answer: status, headers we look at, and the body as JSON (Null when empty or not JSON).
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
    pub retry_after: Option<String>,
    pub link: Option<String>,
}

impl Server {
    /// `carnet serve --listen 127.0.0.1:0 EXTRA…` on `v`'s vault; waits for its line.
    pub fn start(v: &TestVault, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = v.cmd(&args);
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().expect("carnet serve starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("listening on") {
                        let _ = tx.send(line.clone());
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line; stderr: {:?}", lines.lock().unwrap()));
        let rest = line
            .strip_prefix("carnet serve: listening on ")
            .unwrap_or_else(|| panic!("the line is as the contract says: {line}"));
        let (url, fingerprint) = match rest.split_once(" (certificate SHA-256 fingerprint ") {
            Some((url, fp)) => (
                url.to_string(),
                Some(
                    fp.strip_suffix(')')
                        .expect("closing parenthesis")
                        .to_string(),
                ),
            ),
            None => (rest.to_string(), None),
        };
        let agent = match &fingerprint {
            Some(fp) => pinned_agent(fp),
            None => ureq::AgentBuilder::new().build(),
        };
        Server {
            child: Some(child),
            url,
            fingerprint,
            stderr: lines,
            agent,
        }
    }

    /// Sends `method path` with `token` and `body` (JSON text or raw), and extra headers.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.try_call(method, path, token, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// [`Server::call`], or the transport's error (a connection the server closed).
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.status();
        let retry_after = resp.header("retry-after").map(str::to_string);
        let link = resp.header("link").map(str::to_string);
        let text = resp.into_string().unwrap_or_default();
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
            retry_after,
            link,
        })
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, token, None, &[])
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &serde_json::Value) -> Answer {
        self.call("POST", path, token, Some(&body.to_string()), &[])
    }

    /// Logs `user` in; the token.
    pub fn login(&self, user: &str, passphrase: &str) -> String {
        let a = self.post(
            "/v1/sessions",
            None,
            &serde_json::json!({"user": user, "passphrase": passphrase}),
        );
        assert_eq!(a.status, 201, "{}", a.text);
        a.body["token"].as_str().unwrap().to_string()
    }

    /// Closes the client's kept-alive connections (a new client from now on).
    pub fn close_connections(&mut self) {
        self.agent = match &self.fingerprint {
            Some(fp) => pinned_agent(fp),
            None => ureq::AgentBuilder::new().build(),
        };
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Where in the server's memory `needle` occurs: the start of each writable or private
    /// mapping (heap, stacks, anonymous maps) that holds it, read through `/proc/PID/mem` (a
    /// parent may read its child's memory).
    pub fn memory_holding(&self, needle: &[u8]) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let pid = self.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        let mut found = Vec::new();
        for line in maps.lines() {
            let mut parts = line.split_whitespace();
            let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = parts.nth(3).unwrap_or("");
            // Readable and writable: where data lives (not the code or read-only files).
            if !perms.starts_with("rw") || name.starts_with("[v") {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            let mut buf = vec![0u8; (b - a) as usize];
            if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
                continue;
            }
            if buf.windows(needle.len()).any(|w| w == needle) {
                found.push(line.to_string());
            }
        }
        found
    }

    /// SIGTERM, then waits (at most 60 s) for the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                if let Some(signal) = status.signal() {
                    eprintln!(
                        "carnet serve was killed by signal {signal}; its stderr: {}",
                        self.stderr_text()
                    );
                }
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("carnet serve did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the server wrote to stderr, joined.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An agent that accepts exactly the certificate of SHA-256 `fingerprint` (hex), as a desk
/// pinning the server's certificate would.
pub fn pinned_agent(fingerprint: &str) -> ureq::Agent {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        fingerprint: fingerprint.to_ascii_uppercase(),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .build()
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: String = Sha256::digest(end_entity.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint mismatch".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
