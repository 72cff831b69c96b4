//! `carnet serve` (docs/api.md), started for real on 127.0.0.1 and spoken to over HTTPS by a
//! client that pins the certificate the server printed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_tests::serve::Server;
use carnet_tests::{files_under, write_secret, TestVault, PASS};
use serde_json::json;

const BOB: &str = "bob's own long passphrase 7";
const NAME: &str = "Camille CANARYNAME";
const BODY: &str = "serologie CANARYBODY positive";
const PID: &str = "CANARYID-0042";

/// A vault with an administrator, a clinician `bob` and an auditor `ann`.
fn clinic() -> TestVault {
    let v = TestVault::init();
    for (user, role, pass) in [
        ("bob", "clinician", BOB),
        ("ann", "auditor", "ann's own long passphrase 7"),
    ] {
        let f = v.tmp.path().join(format!("{user}.pass"));
        write_secret(&f, format!("{pass}\n"));
        v.run(&[
            "user",
            "add",
            user,
            "--role",
            role,
            "--new-passphrase-file",
            f.to_str().unwrap(),
        ])
        .expect(0);
    }
    v
}

/// Registers the canary patient over the API: its reference.
fn register_canary(s: &Server, t: Option<&str>) -> String {
    let made = s.post(
        "/v1/patients",
        t,
        &json!({"id": PID, "name": NAME, "birth_date": "1984-02-29"}),
    );
    assert_eq!(made.status, 201, "{}", made.text);
    made.body["ref"].as_str().unwrap().to_string()
}

fn error_code(a: &carnet_tests::serve::Answer) -> &str {
    a.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error body: {}", a.text))
}

#[test]
fn a_clinician_logs_in_writes_and_reads_over_https_and_the_server_stops_gracefully() {
    let v = clinic();
    let mut s = Server::start(&v, &[]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let fp = s.fingerprint.clone().unwrap();
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));

    assert_eq!(s.get("/v1/health", None).body, json!({"ok": true}));
    // Nothing without a token; the same answer for a wrong passphrase and an unknown user.
    let a = s.get("/v1/patients", None);
    assert_eq!((a.status, error_code(&a)), (401, "auth_failed"));
    let wrong = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "bob", "passphrase": "not bob's passphrase"}),
    );
    let unknown = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "zed", "passphrase": "not bob's passphrase"}),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.text, unknown.text);

    let login = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "bob", "passphrase": BOB}),
    );
    assert_eq!(login.status, 201, "{}", login.text);
    assert_eq!(login.body["user"], "bob");
    assert_eq!(login.body["role"], "clinician");
    assert!(login.body["expires_at"].as_str().unwrap().ends_with('Z'));
    let t = login.body["token"].as_str().unwrap().to_string();
    let t = Some(t.as_str());

    // Register a patient: a reference comes back, and the identifier never goes in a URL.
    let r = register_canary(&s, t);
    assert_eq!(r.len(), 32);
    let again = s.post("/v1/patients", t, &json!({"id": PID}));
    assert_eq!((again.status, error_code(&again)), (409, "conflict"));
    let found = s.post("/v1/patients/lookup", t, &json!({"id": PID}));
    assert_eq!(found.body, json!({"ref": r}));
    let shown = s.get(&format!("/v1/patients/{r}"), t);
    assert_eq!(shown.body["id"], PID);
    assert_eq!(shown.body["name"], NAME);
    assert_eq!(shown.body["ref"], r.as_str());

    // A note, sent twice with one Idempotency-Key: one note.
    let add = |key: &str| {
        s.call(
            "POST",
            &format!("/v1/patients/{r}/notes"),
            t,
            Some(&json!({"body": BODY, "author": "Dr Leroy", "kind": "lab"}).to_string()),
            &[("Idempotency-Key", key)],
        )
    };
    let first = add("k-1");
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(add("k-1").body, first.body);
    // The same key on another route is another request.
    let other = s.post("/v1/patients", t, &json!({"id": "P-OTHER"}));
    let other_ref = other.body["ref"].as_str().unwrap().to_string();
    let elsewhere = s.call(
        "POST",
        &format!("/v1/patients/{other_ref}/notes"),
        t,
        Some(&json!({"body": "other"}).to_string()),
        &[("Idempotency-Key", "k-1")],
    );
    assert_eq!(elsewhere.status, 201);
    assert_ne!(elsewhere.body, first.body);
    let note = first.body["id"].as_str().unwrap().to_string();
    let listed = s.get(&format!("/v1/patients/{r}/notes"), t);
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{}", listed.text);
    assert!(listed.body[0].get("body").is_none());
    let chart = s.get(&format!("/v1/patients/{r}/notes?bodies=true"), t);
    assert_eq!(chart.body[0]["body"], BODY);
    let one = s.get(&format!("/v1/patients/{r}/notes/{note}"), t);
    assert_eq!(
        (one.body["body"].as_str(), one.body["version"].as_u64()),
        (Some(BODY), Some(1))
    );
    let amended = s.post(
        &format!("/v1/patients/{r}/notes/{note}/versions"),
        t,
        &json!({"body": "amended"}),
    );
    assert_eq!(amended.status, 201, "{}", amended.text);
    assert_eq!(amended.body["version"], 2);
    let versions = s.get(&format!("/v1/patients/{r}/notes/{note}/versions"), t);
    assert_eq!(versions.body.as_array().unwrap().len(), 2);
    assert_eq!(versions.body[0]["body"], BODY);
    let b64 = s.post(
        &format!("/v1/patients/{r}/notes"),
        t,
        &json!({"body_base64": "/wA="}),
    );
    let b64_id = b64.body["id"].as_str().unwrap().to_string();
    let raw = s.get(&format!("/v1/patients/{r}/notes/{b64_id}"), t);
    assert_eq!(raw.body["body_base64"], "/wA=");

    // Errors: their status and code, one line, nothing echoed.
    let a = s.get("/v1/patients/00112233445566778899aabbccddeeff", t);
    assert_eq!((a.status, error_code(&a)), (404, "not_found"));
    let a = s.get(&format!("/v1/patients/{r}/notes/{}", "0".repeat(32)), t);
    assert_eq!((a.status, error_code(&a)), (404, "not_found"));
    // A path that is not text gets the error model too (was axum's plain text).
    let a = s.get("/v1/patients/%FF%FE/notes", t);
    assert_eq!(
        (a.status, error_code(&a)),
        (400, "bad_request"),
        "{}",
        a.text
    );
    let a = s.get(&format!("/v1/patients/{r}/notes/%C3%28"), t);
    assert_eq!(
        (a.status, error_code(&a)),
        (400, "bad_request"),
        "{}",
        a.text
    );
    let a = s.call(
        "POST",
        "/v1/patients",
        t,
        Some("{\"id\": \"CANARYECHO\", \"name\": 7}"),
        &[],
    );
    assert_eq!((a.status, error_code(&a)), (400, "bad_request"));
    assert!(!a.text.contains("CANARYECHO"), "{}", a.text);
    let a = s.call("POST", "/v1/patients", t, Some("{not json"), &[]);
    assert_eq!((a.status, error_code(&a)), (400, "bad_request"));
    let huge = "x".repeat(16 * 1024 * 1024 + 1);
    let a = s.post(
        &format!("/v1/patients/{r}/notes"),
        t,
        &json!({"body": huge}),
    );
    assert_eq!((a.status, error_code(&a)), (413, "too_large"), "{}", a.text);
    // A body over the request limit (24 MiB) is refused as soon as its length is known: the
    // answer is 413 and the connection is closed, so a client still sending may see only that.
    match s.try_call(
        "POST",
        &format!("/v1/patients/{r}/notes"),
        t,
        Some(&"x".repeat(30 << 20)),
        &[],
    ) {
        Ok(a) => assert_eq!((a.status, error_code(&a)), (413, "too_large")),
        Err(e) => assert!(e.contains("Broken pipe") || e.contains("reset"), "{e}"),
    }
    assert_eq!(s.get("/v1/health", None).status, 200, "still serving");
    let a = s.get("/v1/nowhere", t);
    assert_eq!(a.status, 404);

    // The auditor may not read patients; a clinician may not verify or see the keys.
    let ann = s.login("ann", "ann's own long passphrase 7");
    let a = s.get("/v1/patients", Some(&ann));
    assert_eq!((a.status, error_code(&a)), (403, "forbidden"));
    let a = s.call("POST", "/v1/verify", t, None, &[]);
    assert_eq!((a.status, error_code(&a)), (403, "forbidden"));
    assert_eq!(s.get("/v1/key-status", t).status, 403);
    // Search, the text in the body: hits name the patient by reference too.
    let hits = s.post("/v1/search", t, &json!({"text": "AMENDED"}));
    assert_eq!(hits.status, 200, "{}", hits.text);
    assert_eq!(hits.body.as_array().unwrap().len(), 1, "{}", hits.text);
    assert_eq!(hits.body[0]["ref"], r.as_str());
    assert_eq!(hits.body[0]["patient_id"], PID);
    let none = s.post(
        "/v1/search",
        t,
        &json!({"text": "canarybody", "patient_ref": other_ref}),
    );
    assert_eq!(none.body, json!([]));
    // The auditor reads the log, filtered by patient reference and user, through the URL.
    let logged = s.get(&format!("/v1/audit?patient_ref={r}&user=bob"), Some(&ann));
    assert_eq!(logged.status, 200, "{}", logged.text);
    let logged = logged.body.as_array().unwrap().clone();
    assert!(
        logged.iter().any(|e| e["action"] == "note add"),
        "{logged:?}"
    );
    assert!(logged
        .iter()
        .all(|e| e["user"] == "bob" && e["patient_id"] == PID));
    let a = s.get("/v1/audit", t);
    assert_eq!(
        (a.status, error_code(&a)),
        (403, "forbidden"),
        "a clinician does not"
    );
    // The export is the CLI's JSON.
    let exported = s.get(&format!("/v1/patients/{r}/export"), t);
    assert_eq!(exported.body["format"], "carnet-export-v1");
    assert_eq!(exported.body["notes"][0]["versions"][0]["body"], BODY);
    let admin = s.login("admin", PASS);
    let verified = s.call("POST", "/v1/verify", Some(&admin), None, &[]);
    assert_eq!(verified.body["ok"], true, "{}", verified.text);
    assert_eq!(s.get("/v1/key-status", Some(&admin)).body["format"], 2);

    // Logging out ends the token.
    assert_eq!(
        s.call("DELETE", "/v1/sessions/current", t, None, &[])
            .status,
        204
    );
    let a = s.get("/v1/patients", t);
    assert_eq!((a.status, error_code(&a)), (401, "auth_failed"));

    assert_eq!(
        s.stop(),
        0,
        "a graceful stop exits 0; stderr: {}",
        s.stderr_text()
    );
    // The access log names the clinician; the vault holds what was written.
    let audit = v.run(&["--json", "audit"]).expect(0).json();
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["user"] == "bob" && e["action"] == "note add"),
        "{audit}"
    );
    let shown = v
        .run(&["--json", "note", "show", PID, &note])
        .expect(0)
        .json();
    assert_eq!(shown["body"], "amended");
    let cli_export = v.run(&["export", PID]).expect(0).json();
    assert_eq!(cli_export["ref"], exported.body["ref"]);
    assert_eq!(
        cli_export["notes"][0]["versions"][0],
        exported.body["notes"][0]["versions"][0]
    );

    // No canary in anything the server wrote: its stderr, its state, the vault's files.
    let mut written: Vec<(String, Vec<u8>)> = vec![("stderr".into(), s.stderr_text().into_bytes())];
    for dir in [v.dir.clone(), v.state_dir()] {
        for (p, b) in files_under(&dir) {
            written.push((p.display().to_string(), b));
        }
    }
    assert!(
        written.iter().any(|(p, _)| p.ends_with("server-key.pem")),
        "the state is scanned"
    );
    for (what, bytes) in &written {
        for canary in [
            "CANARYNAME",
            "CANARYBODY",
            "CANARYID",
            "CANARYECHO",
            PASS,
            BOB,
        ] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} in {what}"
            );
        }
    }
}

#[test]
fn plain_http_is_refused_off_loopback_and_served_on_it() {
    let v = TestVault::init();
    let r = v
        .run(&["serve", "--insecure-http", "--listen", "0.0.0.0:0"])
        .expect(2);
    assert!(r.stderr.contains("loopback"), "{}", r.stderr);
    let mut s = Server::start(&v, &["--insecure-http"]);
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    assert!(s.fingerprint.is_none());
    assert_eq!(s.get("/v1/health", None).body, json!({"ok": true}));
    assert_eq!(s.stop(), 0);
}

#[test]
fn an_idle_session_ends_and_failed_logins_are_delayed_while_the_server_keeps_serving() {
    let v = TestVault::init();
    let s = Server::start(&v, &["--idle-seconds", "2"]);
    let t = s.login("admin", PASS);
    assert_eq!(s.get("/v1/patients", Some(&t)).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let a = s.get("/v1/patients", Some(&t));
    assert_eq!((a.status, error_code(&a)), (401, "auth_failed"));

    // Three failures are free; the fourth is answered, the fifth waits: 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let a = s.post(
            "/v1/sessions",
            None,
            &json!({"user": "admin", "passphrase": "wrong wrong wrong"}),
        );
        if a.status == 429 {
            assert_eq!(error_code(&a), "rate_limited");
            assert!(a.retry_after.as_deref().unwrap().parse::<u64>().unwrap() >= 1);
        }
        statuses.push(a.status);
    }
    assert_eq!(&statuses[..4], &[401, 401, 401, 401], "{statuses:?}");
    assert!(statuses[4..].contains(&429), "{statuses:?}");
    // Even the right passphrase waits its turn; the server still answers.
    let a = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "admin", "passphrase": PASS}),
    );
    assert_eq!(a.status, 429);
    assert_eq!(s.get("/v1/health", None).status, 200);
    assert!(s.stderr_text().contains("failed login from 127.0.0.1"));
    assert!(!s.stderr_text().contains("wrong wrong"));
}

/// The operation of the OpenAPI document that `method path` is, with its template.
fn operation<'a>(
    doc: &'a serde_json::Value,
    method: &str,
    path: &str,
) -> Option<&'a serde_json::Value> {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(template, ops)| {
            let t: Vec<&str> = template.split('/').collect();
            let same = t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(a, b)| a.starts_with('{') || a == b);
            if same {
                ops.get(method.to_ascii_lowercase())
            } else {
                None
            }
        })
}

/// `schema` with its `$ref` followed.
fn resolve<'a>(doc: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    }
}

/// Whether `value` has the shape of `schema`: objects have every required property and no
/// other than those listed; arrays' items too. (Enough to hold the server to its document.)
fn shape(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(items) = schema.get("items") {
        let arr = value.as_array().ok_or(format!("not an array: {value}"))?;
        return arr.iter().try_for_each(|v| shape(doc, items, v));
    }
    if let Some(props) = schema["properties"].as_object() {
        let obj = value.as_object().ok_or(format!("not an object: {value}"))?;
        for r in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap()) {
                return Err(format!("missing {r} in {value}"));
            }
        }
        for (k, v) in obj {
            let p = props.get(k).ok_or(format!("{k} is not in the document"))?;
            shape(doc, p, v)?;
        }
    }
    Ok(())
}

/// Holds one answer to the document: its status is declared for the operation, and its body
/// has that status's shape.
fn conforms(doc: &serde_json::Value, method: &str, path: &str, a: &carnet_tests::serve::Answer) {
    let op = operation(doc, method, path)
        .unwrap_or_else(|| panic!("{method} {path} is not in the document"));
    let declared = &op["responses"][a.status.to_string()];
    assert!(
        !declared.is_null(),
        "{method} {path} answered {} which the document does not declare",
        a.status
    );
    if let Some(schema) = declared["content"]["application/json"].get("schema") {
        shape(doc, schema, &a.body).unwrap_or_else(|e| panic!("{method} {path} {}: {e}", a.status));
    }
}

#[test]
fn the_server_serves_its_openapi_document_and_holds_to_it() {
    let v = TestVault::init();
    let s = Server::start(&v, &[]);
    let checked_in: serde_json::Value =
        serde_json::from_str(include_str!("../../crates/server/openapi.json")).unwrap();
    let served = s.get("/v1/openapi.json", None);
    assert_eq!(served.status, 200);
    assert_eq!(served.body, checked_in);
    assert_eq!(checked_in["openapi"], "3.1.0");
    let doc = &checked_in;

    // Every operation of the document is served: without a token, each answers as declared
    // (never the router's "no such route").
    let r = "00112233445566778899aabbccddeeff";
    for (template, ops) in doc["paths"].as_object().unwrap() {
        let path = template.replace("{pref}", r).replace("{note}", r);
        for method in ops.as_object().unwrap().keys() {
            let body = (method == "post").then_some("{}");
            let a = s.call(&method.to_ascii_uppercase(), &path, None, body, &[]);
            conforms(doc, method, &path, &a);
            // A route that needs a token refuses without one; a public one answers.
            let public = ops[method]["security"]
                .as_array()
                .is_some_and(|s| s.is_empty());
            if public {
                assert!(
                    [200, 201, 400].contains(&a.status),
                    "{method} {path}: {}",
                    a.status
                );
            } else {
                assert_eq!(a.status, 401, "{method} {path}: {}", a.text);
            }
        }
    }

    // A session's answers, success and error, have the document's statuses and shapes.
    let login = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "admin", "passphrase": PASS}),
    );
    conforms(doc, "POST", "/v1/sessions", &login);
    let t = login.body["token"].as_str().unwrap().to_string();
    let t = Some(t.as_str());
    let mut calls: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        (
            "POST",
            "/v1/patients".into(),
            Some(json!({"id": "P-1", "name": "N", "birth_date": "1990-01-01"})),
        ),
        ("POST", "/v1/patients".into(), Some(json!({"id": "P-1"}))),
        ("POST", "/v1/patients".into(), Some(json!({"nope": 1}))),
        (
            "POST",
            "/v1/patients/lookup".into(),
            Some(json!({"id": "P-404"})),
        ),
    ];
    for (m, p, b) in calls.drain(..) {
        let a = s.call(m, &p, t, b.map(|b| b.to_string()).as_deref(), &[]);
        conforms(doc, m, &p, &a);
    }
    let pr = s.post("/v1/patients/lookup", t, &json!({"id": "P-1"})).body["ref"]
        .as_str()
        .unwrap()
        .to_string();
    let n = s.post(
        &format!("/v1/patients/{pr}/notes"),
        t,
        &json!({"body": "x", "kind": "k"}),
    );
    conforms(doc, "POST", "/v1/patients/x/notes", &n);
    let nid = n.body["id"].as_str().unwrap().to_string();
    let calls: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", "/v1/patients".into(), None),
        ("GET", "/v1/patients?limit=0".into(), None),
        ("GET", format!("/v1/patients/{pr}"), None),
        ("GET", format!("/v1/patients/{r}"), None),
        ("GET", format!("/v1/patients/{pr}/notes"), None),
        ("GET", format!("/v1/patients/{pr}/notes?bodies=true"), None),
        ("GET", format!("/v1/patients/{pr}/notes/{nid}"), None),
        ("GET", format!("/v1/patients/{pr}/notes/{r}"), None),
        (
            "POST",
            format!("/v1/patients/{pr}/notes/{nid}/versions"),
            Some(json!({"body": "y"})),
        ),
        (
            "POST",
            format!("/v1/patients/{pr}/notes/{nid}/versions"),
            Some(json!({"body": "y", "body_base64": "eQ=="})),
        ),
        (
            "GET",
            format!("/v1/patients/{pr}/notes/{nid}/versions"),
            None,
        ),
        ("GET", format!("/v1/patients/{pr}/export"), None),
        ("GET", format!("/v1/patients/{r}/export"), None),
        ("POST", "/v1/search".into(), Some(json!({"text": "X"}))),
        ("POST", "/v1/search".into(), Some(json!({"text": ""}))),
        (
            "POST",
            "/v1/search".into(),
            Some(json!({"text": "x", "patient_ref": pr})),
        ),
        (
            "GET",
            format!("/v1/audit?user=admin&patient_ref={pr}"),
            None,
        ),
        ("GET", "/v1/audit?since=yesterday".into(), None),
        ("POST", "/v1/verify".into(), None),
        ("GET", "/v1/key-status".into(), None),
        ("DELETE", "/v1/sessions/current".into(), None),
    ];
    for (m, p, b) in calls {
        let a = s.call(m, &p, t, b.map(|b| b.to_string()).as_deref(), &[]);
        conforms(doc, m, &p, &a);
    }
}

#[test]
fn lists_are_paginated_with_a_link_to_the_next_page() {
    let v = TestVault::init();
    for i in 0..5 {
        v.run(&["patient", "add", &format!("P-{i}")]).expect(0);
    }
    let s = Server::start(&v, &[]);
    let t = s.login("admin", PASS);
    let mut seen = Vec::new();
    let mut next = Some("/v1/patients?limit=2".to_string());
    while let Some(path) = next {
        let a = s.get(&path, Some(&t));
        assert_eq!(a.status, 200, "{}", a.text);
        for p in a.body.as_array().unwrap() {
            seen.push(p["id"].as_str().unwrap().to_string());
        }
        next = a.link.map(|l| {
            let (url, rel) = l.split_once("; ").unwrap();
            assert_eq!(rel, "rel=\"next\"");
            url.trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        });
        assert!(seen.len() <= 5, "pages end");
    }
    assert_eq!(seen, ["P-0", "P-1", "P-2", "P-3", "P-4"]);
}

/// The clinic's day goes on while a server holds its sled vault: the administrator's commands
/// (backup, user add and remove, key rotations, verify, and any other) reach the vault through
/// the server's local channel instead of "vault in use"; the server's sessions see what they
/// did at once; a backup made while clinicians write is one moment and restores.
#[test]
fn the_administrators_commands_reach_a_served_sled_vault_through_its_local_channel() {
    let v = clinic();
    v.run(&["patient", "add", "P-1"]).expect(0);
    let mut s = Server::start(&v, &[]);
    let sock = v.dir.join("serve.sock");
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let m = std::fs::symlink_metadata(&sock).expect("the channel is in the vault's directory");
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let bob = s.login("bob", BOB);
    let ann = s.login("ann", "ann's own long passphrase 7");
    let listed = s.get("/v1/patients", Some(&bob));
    let r = listed.body[0]["ref"].as_str().unwrap().to_string();

    // A clinician keeps writing over HTTPS while the administrator works at the desk.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = {
        let (url, fp, token, r, stop) = (
            s.url.clone(),
            s.fingerprint.clone().unwrap(),
            bob.clone(),
            r.clone(),
            std::sync::Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let agent = carnet_tests::serve::pinned_agent(&fp);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let a = agent
                    .post(&format!("{url}/v1/patients/{r}/notes"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .send_json(json!({"body": format!("during {n}")}));
                match a {
                    Ok(resp) => assert_eq!(resp.status(), 201),
                    Err(ureq::Error::Status(code, resp)) => {
                        panic!(
                            "a clinician's write failed: {code} {}",
                            resp.into_string().unwrap()
                        )
                    }
                    Err(e) => panic!("a clinician's write failed: {e}"),
                }
                n += 1;
            }
            n
        })
    };

    let f = v.tmp.path().join("carol.pass");
    write_secret(&f, "carol's own long passphrase 7\n");
    v.run(&[
        "user",
        "add",
        "carol",
        "--role",
        "clinician",
        "--new-passphrase-file",
        f.to_str().unwrap(),
    ])
    .expect(0);
    let carol = s.login("carol", "carol's own long passphrase 7");
    let from_desk = v.add_note("P-1", "written at the desk", &[]);
    let seen = s.get(&format!("/v1/patients/{r}/notes/{from_desk}"), Some(&carol));
    assert_eq!(seen.body["body"], "written at the desk", "{}", seen.text);
    v.run(&["key", "rotate-patient", "P-1"]).expect(0);
    v.run(&["key", "rotate-master"]).expect(0);
    let backup = v.tmp.path().join("nightly.carnet");
    let b = v.run(&["backup", backup.to_str().unwrap()]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    v.run(&["verify"]).expect(0);
    // The clinician's session read the new keys and went on writing through all of it.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = written.join().unwrap();
    assert!(n > 0, "the clinician wrote during the administrator's work");
    let chart = s.get(&format!("/v1/patients/{r}/notes"), Some(&bob));
    assert_eq!(chart.status, 200, "{}", chart.text);
    // Every note bob was told was written is there (counted at the desk: the route pages).
    let listed = v.run(&["note", "list", "P-1", "--json"]).expect(0).json();
    assert_eq!(listed.as_array().unwrap().len(), n + 1);

    // Removing bob at the desk ends his session at once; the others go on.
    v.run(&["user", "remove", "bob"]).expect(0);
    assert_eq!(s.get("/v1/patients", Some(&bob)).status, 401);
    assert_eq!(s.get("/v1/audit", Some(&ann)).status, 200);

    // The backup, made while bob wrote, restores to a vault that verifies and holds a
    // prefix of what he wrote: one moment.
    let restored = TestVault::new();
    let r2 = restored.run(&["restore", backup.to_str().unwrap()]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    restored.run(&["verify"]).expect(0);
    let notes = restored
        .run(&["note", "list", "P-1", "--json"])
        .expect(0)
        .json();
    let kept = notes.as_array().unwrap().len();
    assert!((1..=n + 1).contains(&kept), "{kept} of {}", n + 1);

    // Once the server stops, its channel is gone and the desk opens the files again.
    assert_eq!(s.stop(), 0);
    assert!(!sock.exists(), "the channel is removed at the stop");
    v.run(&["verify"]).expect(0);
}

/// A server killed outright leaves its socket behind: the desk opens the files as usual; a new
/// server replaces the socket. A command killed while it held a key operation through the
/// channel holds nothing after: the next one finishes it.
#[test]
fn a_dead_servers_channel_is_ignored_and_a_killed_desk_command_holds_nothing() {
    let v = clinic();
    for i in 0..40 {
        v.run(&["patient", "add", &format!("P-{i}")]).expect(0);
    }
    let s = Server::start(&v, &[]);
    let mut rotating = v.cmd(&["key", "rotate-patient", "--all"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    rotating.kill().unwrap();
    rotating.wait().unwrap();
    // Whether it died before, during or after its work: the next rotation runs and ends.
    let again = v.run(&["key", "rotate-patient", "--all"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    v.run(&["verify"]).expect(0);
    drop(s); // SIGKILL: the socket stays
    assert!(v.dir.join("serve.sock").exists());
    v.run(&["verify"]).expect(0);
    let mut s = Server::start(&v, &[]);
    let t = s.login("bob", BOB);
    assert_eq!(s.get("/v1/patients", Some(&t)).status, 200);
    v.run(&["verify"]).expect(0);
    assert_eq!(s.stop(), 0);
}

/// Keys only while someone works, and no plaintext outliving its request: once every clinician
/// has logged out (and their connections closed), nothing of the names, identifiers or note
/// texts they read and wrote is left anywhere in the server's memory.
#[test]
fn once_everyone_logged_out_the_servers_memory_holds_no_plaintext() {
    let v = clinic();
    let mut s = Server::start(&v, &[]);
    // The scan sees what is there: the server's own arguments, on its stack.
    assert!(!s.memory_holding(b"127.0.0.1:0").is_empty());
    {
        let t = s.login("bob", BOB);
        let t = Some(t.as_str());
        let r = register_canary(&s, t);
        for _ in 0..3 {
            let n = s.post(
                &format!("/v1/patients/{r}/notes"),
                t,
                &json!({"body": BODY}),
            );
            assert_eq!(n.status, 201, "{}", n.text);
        }
        assert_eq!(s.get(&format!("/v1/patients/{r}"), t).body["name"], NAME);
        let chart = s.get(&format!("/v1/patients/{r}/notes?bodies=true"), t);
        assert_eq!(chart.body[0]["body"], BODY);
        let found = s.post("/v1/search", t, &json!({"text": "CANARYBODY"}));
        assert_eq!(found.status, 200, "{}", found.text);
        let export = s.get(&format!("/v1/patients/{r}/export"), t);
        assert_eq!(export.status, 200, "{}", export.text);
        assert_eq!(
            s.call("DELETE", "/v1/sessions/current", t, None, &[])
                .status,
            204
        );
    }
    s.close_connections();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for canary in ["CANARYBODY", "CANARYNAME", "CANARYID-0042"] {
        let holding = s.memory_holding(canary.as_bytes());
        assert!(
            holding.is_empty(),
            "{canary} is still in the server's memory after every logout, in: {holding:#?}"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// Hostile clients leave the server serving: connections that never finish their handshake
/// are closed after its 10 s, and thousands of failed logins (each from one address, each a
/// new user name) are answered quickly, in bounded memory, while a clinician elsewhere logs in
/// and reads.
#[test]
fn slow_clients_and_thousands_of_failed_logins_leave_the_server_serving() {
    use std::io::Read;
    let v = clinic();
    let s = Server::start(&v, &["--trust-proxy", "127.0.0.1"]);
    let addr = s.url.trim_start_matches("https://").to_string();
    // Fifty connections that send nothing.
    let slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let from = |ip: &str| vec![("X-Forwarded-For", ip.to_string())];
    let login = |ip: &str, user: &str, pass: &str| {
        let h = from(ip);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.call(
            "POST",
            "/v1/sessions",
            None,
            Some(&json!({"user": user, "passphrase": pass}).to_string()),
            &h,
        )
    };
    // A clinician is served meanwhile.
    let bob = login("10.0.0.2", "bob", BOB);
    assert_eq!(bob.status, 201, "{}", bob.text);
    let bob = bob.body["token"].as_str().unwrap().to_string();
    let before = rss_kib(s.pid());
    let started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..2000 {
        let a = login("10.0.0.66", &format!("guess-{i}"), "wrong wrong wrong");
        *statuses.entry(a.status).or_insert(0) += 1;
    }
    let took = started.elapsed();
    // Three failures are free and the fourth is answered (each a real unlock); then every one
    // is delayed: 429, without an unlock.
    // (A delay that ran out while the flood went on lets one more through: 1, 2, 4 s...)
    let unlocked = statuses.get(&401).copied().unwrap_or(0);
    assert!((4..=8).contains(&unlocked), "{statuses:?}");
    assert_eq!(
        statuses.get(&429).copied().unwrap_or(0) + unlocked,
        2000,
        "{statuses:?}"
    );
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    let after = rss_kib(s.pid());
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} to {after} KiB"
    );
    // Another address is not held up, and bob's session reads on.
    let carol_like = login("10.0.0.3", "ann", "ann's own long passphrase 7");
    assert_eq!(carol_like.status, 201, "{}", carol_like.text);
    assert_eq!(s.get("/v1/patients", Some(&bob)).status, 200);
    // The silent connections are closed by the server (the handshake's 10 s), not kept.
    for mut c in slow {
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes to a client that said nothing"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a silent connection was kept open: {e}"),
        }
    }
    assert_eq!(s.get("/v1/health", None).status, 200);
}

/// The server remembers the vault's head as the command line does (ADR 0013), in the same
/// place: a vault put back to an older state while the server was stopped is refused at the
/// first login, and the desks know what the server's clinicians wrote.
#[test]
fn a_vault_put_back_to_an_older_state_is_refused_by_the_server_and_by_the_desks() {
    let v = clinic();
    v.run(&["patient", "add", "P-1"]).expect(0);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    let mut s = Server::start(&v, &[]);
    let t = s.login("bob", BOB);
    let r = s.get("/v1/patients", Some(&t)).body[0]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let n = s.post(
            &format!("/v1/patients/{r}/notes"),
            Some(&t),
            &json!({"body": "x"}),
        );
        assert_eq!(n.status, 201, "{}", n.text);
    }
    assert_eq!(
        s.call("DELETE", "/v1/sessions/current", Some(&t), None, &[])
            .status,
        204
    );
    assert_eq!(s.stop(), 0);
    // The storage host puts the older copy back.
    std::fs::remove_dir_all(&v.dir).unwrap();
    carnet_tests::copy_dir(&old, &v.dir);
    // A desk sees it: the server remembered what its clinician wrote.
    let desk = v.run(&["patient", "list"]);
    assert_eq!(desk.code, 5, "{}", desk.stderr);
    // And so does the server, at the first login.
    let s = Server::start(&v, &[]);
    let a = s.post(
        "/v1/sessions",
        None,
        &json!({"user": "bob", "passphrase": BOB}),
    );
    assert_eq!((a.status, error_code(&a)), (500, "integrity"), "{}", a.text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.stderr_text().contains("older than this machine saw") {
        assert!(std::time::Instant::now() < deadline, "{}", s.stderr_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A client that hangs up in the middle of its login neither escapes the login delays nor
/// frees a place for another unlock: the failure is counted by the unlock itself.
#[test]
fn logins_whose_clients_hang_up_still_count_as_failures() {
    let v = clinic();
    let s = Server::start(&v, &["--trust-proxy", "127.0.0.1"]);
    let agent = carnet_tests::serve::pinned_agent(s.fingerprint.as_deref().unwrap());
    let health = format!("{}/v1/health", s.url);
    for i in 0..6 {
        // A warm connection, then a login whose answer the client does not wait for.
        agent.get(&health).call().unwrap();
        let r = agent
            .post(&format!("{}/v1/sessions", s.url))
            .set("X-Forwarded-For", "10.9.9.9")
            .timeout(std::time::Duration::from_millis(5))
            .send_json(json!({"user": format!("guess-{i}"), "passphrase": "wrong wrong wrong"}));
        assert!(r.is_err(), "the client hung up before the answer");
    }
    // The unlocks ran to their end, and each counted its failure (noted on the server's log
    // as it is counted: before, the count came after the request's answer, which a hung-up
    // client never took).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counted = s
            .stderr_text()
            .matches("failed login from 10.9.9.9")
            .count();
        if counted >= 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} failures counted; stderr: {}",
            s.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
