//! The routes of docs/api.md. Every handler that touches the vault runs it on the blocking
//! pool, as the session's own [`Vault`]; nothing a request decrypted outlives it.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State as Axum};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use carnet_core::{
    Checkpoint, Error, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, PatientRef,
    Role, Timestamp, Vault,
};
use carnet_json::{
    audit_entry_json, export_json, key_status_json, note_json, patient_json, rfc3339,
    search_hit_json, verify_json,
};
use carnet_storage::Store;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use zeroize::Zeroize;

use crate::error::ApiError;
use crate::limits::Limiter;
use crate::sessions::{Refused, Session, Sessions};
use crate::ServeError;

/// The OpenAPI 3.1 document of this API, checked in beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The largest request body: a 16 MiB note as JSON (escaped) or base64, with room to spare.
const MAX_REQUEST_BYTES: usize = 24 * 1024 * 1024;
/// The longest and default page of a list.
const MAX_PAGE: usize = 1000;
/// Logins waiting for an unlock at most; more are told to come back.
const MAX_WAITING_LOGINS: usize = 64;
/// How long an `Idempotency-Key` is remembered, and how many at most.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A route's path parameters (a reference, a note id), refused in our error model when they
/// are not text (axum's own refusal is plain text).
struct Path<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| Path(t))
            .map_err(|_| {
                ApiError::bad_request("malformed path: it is not valid percent-encoded UTF-8")
            })
    }
}

/// Everything the routes share.
pub struct State<S: Store> {
    store: Arc<S>,
    sessions: Sessions<S>,
    limiter: Limiter,
    unlocks: Arc<Semaphore>,
    waiting_logins: Arc<Semaphore>,
    trusted_proxy: Option<IpAddr>,
    log_file: Option<Mutex<std::fs::File>>,
    /// Answers of creating requests, by SHA-256 of (user, key): the status and body only
    /// (references and note ids, never clinical data).
    idempotent: Mutex<HashMap<[u8; 32], (Instant, StatusCode, Value)>>,
    /// Whether patients registered before references were given one by this server.
    references_given: Arc<std::sync::atomic::AtomicBool>,
    /// The newest log head this server (or, before it started, this machine) saw: a login that
    /// finds the vault behind it is refused (ADR 0013).
    highest: Mutex<Option<Checkpoint>>,
    memory: Option<Box<dyn crate::HeadMemory>>,
}

impl<S: Store + 'static> State<S> {
    pub fn new(
        store: Arc<S>,
        idle: Duration,
        absolute: Duration,
        unlocks: usize,
        trusted_proxy: Option<IpAddr>,
        log_file: Option<PathBuf>,
        memory: Option<Box<dyn crate::HeadMemory>>,
    ) -> Result<Self, ServeError> {
        let log_file = match log_file {
            Some(p) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    o.mode(0o600);
                }
                Some(Mutex::new(o.open(&p).map_err(|e| {
                    ServeError::Usage(format!("cannot open the log file {}: {e}", p.display()))
                })?))
            }
            None => None,
        };
        Ok(State {
            store,
            sessions: Sessions::new(idle, absolute),
            limiter: Limiter::default(),
            unlocks: Arc::new(Semaphore::new(unlocks.max(1))),
            waiting_logins: Arc::new(Semaphore::new(MAX_WAITING_LOGINS)),
            trusted_proxy,
            log_file,
            idempotent: Mutex::default(),
            references_given: Arc::default(),
            highest: Mutex::new(memory.as_ref().and_then(|m| m.seen())),
            memory,
        })
    }

    /// The newest head this machine saw: the state directory's (which desks and this server
    /// write, and which `carnet audit accept-rewind` may set back on purpose), read afresh;
    /// without one, what this server saw.
    fn reference(&self) -> Option<Checkpoint> {
        match &self.memory {
            Some(m) => m.seen(),
            None => *self.highest.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Whether `vault` extends the newest head seen; if not (it was put back to an older state
    /// behind this machine's back), says so on the server's log.
    fn extends(&self, vault: &Vault<Arc<S>>) -> Result<()> {
        let Some(seen) = self.reference() else {
            return Ok(());
        };
        vault.check_extends(&seen).map_err(|e| {
            if matches!(&e, Error::Integrity(i) if i.kind() == carnet_core::ProblemKind::RolledBack) {
                self.note("the vault is older than this machine saw it (its access log was put back): logins are refused; keep a copy of the vault and restore the latest backup, or accept it with `carnet audit accept-rewind`");
            }
            e.into()
        })
    }

    /// Refuses a vault whose log does not extend the newest head seen, then remembers its head.
    fn check_and_remember(&self, vault: &Vault<Arc<S>>) -> Result<()> {
        self.extends(vault)?;
        if let Ok(head) = vault.durable_head() {
            self.remember(head);
        }
        Ok(())
    }

    /// Remembers `head` if it is newer than the newest seen.
    fn remember(&self, head: Checkpoint) {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        if highest.is_none_or(|h| head.count > h.count) {
            *highest = Some(head);
        }
        if let Some(m) = &self.memory {
            m.remember(&head);
        }
    }

    /// As a session ends: its vault's head is remembered, if the vault still extends what was
    /// seen (a rollback while the session was open is said, not remembered).
    fn session_ended(&self, s: &Session<S>) {
        let Ok(v) = s.vault() else { return };
        if self.extends(&v).is_ok() {
            if let Ok(head) = v.durable_head() {
                self.remember(head);
            }
        }
    }

    /// One line for the administrator: no secret, no user name as typed, no identifier.
    fn note(&self, line: &str) {
        let line = format!("carnet serve: {line}\n");
        match &self.log_file {
            Some(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    /// Ends every session: their keys are dropped (zeroized) here, after their access-log
    /// entries are flushed.
    pub async fn stop(self: &Arc<Self>) {
        for s in self.sessions.close_all() {
            // Its head, durable (the log flushed), is remembered; the keys go with it.
            let st = Arc::clone(self);
            let _ = tokio::task::spawn_blocking(move || st.session_ended(&s)).await;
        }
    }
}

/// Ends expired sessions every second (the server remembers the head each reached).
pub async fn sweep_sessions<S: Store + 'static>(state: Arc<State<S>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ended = state.sessions.sweep();
        if !ended.is_empty() {
            let st = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || {
                for s in ended {
                    st.session_ended(&s);
                }
            })
            .await;
        }
    }
}

/// The client's address, as the connection gave it.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// The hyper service of one connection from `peer`.
pub fn service(
    app: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(Peer(peer));
        app.clone().oneshot(req)
    })
}

pub fn router<S: Store + 'static>(state: Arc<State<S>>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sessions", post(login::<S>))
        .route("/v1/sessions/current", delete(logout::<S>))
        .route(
            "/v1/patients",
            get(list_patients::<S>).post(add_patient::<S>),
        )
        .route("/v1/patients/lookup", post(lookup_patient::<S>))
        .route("/v1/patients/{pref}", get(show_patient::<S>))
        .route(
            "/v1/patients/{pref}/notes",
            get(list_notes::<S>).post(add_note::<S>),
        )
        .route("/v1/patients/{pref}/notes/{note}", get(show_note::<S>))
        .route(
            "/v1/patients/{pref}/notes/{note}/versions",
            get(note_versions::<S>).post(amend_note::<S>),
        )
        .route("/v1/patients/{pref}/export", get(export::<S>))
        .route("/v1/search", post(search::<S>))
        .route("/v1/audit", get(audit::<S>))
        .route("/v1/verify", post(verify::<S>))
        .route("/v1/key-status", get(key_status::<S>))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "this method is not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"ok": true}))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// How long a request waits for a key operation of another process (a rotation, a user added
/// or removed at a desk) before it answers 503: such operations run alone, and most take
/// moments.
const WAIT_FOR_KEY_OPERATION: Duration = Duration::from_secs(15);

/// Requests served at once per core (the others wait their turn, in order).
const WORK_PER_CORE: usize = 1;

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("the request failed"))?
}

/// Runs `f` on the blocking pool; again, after a pause, while a key operation holds the
/// vault (for [`WAIT_FOR_KEY_OPERATION`] at most). `f` wrote nothing when it failed so.
async fn waiting<T: Send + 'static>(f: impl FnMut() -> Result<T> + Send + 'static) -> Result<T> {
    // Requests take turns, first come first served, as many at once as the machine has cores:
    // more would only share the cores unevenly (the slowest request of many waits longest),
    // fewer would leave one idle.
    static TURNS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    run_in_turn(lane(&TURNS), f).await
}

/// [`waiting`] for the long requests (search, export, audit, verify): in a lane of their own,
/// as many at once as there are cores, so that two of them never hold up every single-note
/// read behind them.
async fn waiting_long<T: Send + 'static>(
    f: impl FnMut() -> Result<T> + Send + 'static,
) -> Result<T> {
    static LONG: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    run_in_turn(lane(&LONG), f).await
}

/// A lane's turns: as many as the machine has cores (times [`WORK_PER_CORE`]).
fn lane(cell: &'static std::sync::OnceLock<Arc<Semaphore>>) -> &'static Arc<Semaphore> {
    cell.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores * WORK_PER_CORE))
    })
}

async fn run_in_turn<T: Send + 'static>(
    turns: &'static Arc<Semaphore>,
    mut f: impl FnMut() -> Result<T> + Send + 'static,
) -> Result<T> {
    let deadline = Instant::now() + WAIT_FOR_KEY_OPERATION;
    let mut pause = Duration::from_millis(20);
    loop {
        let turn = Arc::clone(turns)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the request failed"))?;
        // The turn goes with the work, not with the request: a client that hangs up does not
        // give back a turn whose work still runs.
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = f();
            drop(turn);
            (f, r)
        })
        .await
        .map_err(|_| ApiError::internal("the request failed"))?;
        f = back;
        match result {
            Err(e) if e.waits() => {
                if Instant::now() + pause > deadline {
                    return Err(e.after_waiting(5));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// A JSON body of type `T`.
fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T> {
    parse_bytes(&read_body(body)?)
}

/// The request's body, or why it could not be read.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the request body is over {} MiB",
                MAX_REQUEST_BYTES >> 20
            ))
        } else {
            ApiError::bad_request("cannot read the request body")
        }
    })
}

fn parse_bytes<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages may quote the value ("invalid type: string \"…\""): only the
        // class, the position, and a missing field's name (ours) are passed on.
        use serde_json::error::Category;
        let at = format!("line {} column {}", e.line(), e.column());
        let m = e.to_string();
        ApiError::bad_request(match e.classify() {
            Category::Data if m.starts_with("missing field `") => {
                format!(
                    "malformed JSON body: {}",
                    m.split(" at line").next().unwrap_or(&m)
                )
            }
            Category::Data if m.starts_with("unknown field") => {
                format!("malformed JSON body: an unknown field at {at}")
            }
            Category::Data => format!("malformed JSON body: a field of the wrong type at {at}"),
            Category::Eof => "malformed JSON body: it ends too soon".to_string(),
            Category::Syntax | Category::Io => format!("malformed JSON body: invalid JSON at {at}"),
        })
    })
}

/// The session the request's bearer token names, with the role it needs.
fn session<S: Store>(
    state: &State<S>,
    headers: &HeaderMap,
    allowed: &[Role],
) -> Result<Arc<Session<S>>> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::auth_failed(
            "log in first (POST /v1/sessions) and send Authorization: Bearer TOKEN",
        )
    })?;
    let s = state.sessions.get(token).ok_or_else(|| {
        ApiError::auth_failed("this session has ended or never existed: log in again")
    })?;
    if !allowed.contains(&s.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("not permitted for the {} role", s.role.name()),
        ));
    }
    Ok(s)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

const CLINICAL: &[Role] = &[Role::Clinician, Role::Admin];

/// The session's vault with current keys; a session whose user was removed (or changed their
/// passphrase) since login ends here.
fn current<S: Store>(s: &Session<S>) -> Result<std::sync::RwLockReadGuard<'_, Vault<Arc<S>>>> {
    s.vault().map_err(|r| match r {
        Refused::Revoked => ApiError::auth_failed(
            "this user was removed or changed their passphrase since logging in: log in again",
        ),
        Refused::Error(e) => e.into(),
    })
}

// ---- sessions ----

#[derive(Deserialize)]
struct Login {
    user: String,
    passphrase: String,
}

/// The client's address: the peer, or, when the peer is the trusted proxy, the last address
/// of `X-Forwarded-For` (the one that proxy added).
fn client_addr<S: Store>(state: &State<S>, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.trusted_proxy == Some(peer.ip()) {
        if let Some(addr) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse().ok())
        {
            return addr;
        }
    }
    peer.ip()
}

async fn login<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    // The body holds the passphrase: parsed in place, then wiped (when the buffer is ours
    // alone, as it is for a body read whole).
    let parsed: Result<Login> = match read_body(body)?.try_into_mut() {
        Ok(mut owned) => {
            let parsed = parse_bytes(&owned);
            owned.as_mut().zeroize();
            parsed
        }
        Err(shared) => parse_bytes(&shared),
    };
    let Login { user, passphrase } = parsed?;
    let passphrase = Passphrase::new(passphrase);
    let addr = client_addr(&state, peer, &headers);
    if let Some(wait) = state.limiter.delayed(&user, addr) {
        return Err(ApiError::rate_limited(wait));
    }
    let Ok(waiting) = Arc::clone(&state.waiting_logins).try_acquire_owned() else {
        return Err(ApiError::busy(
            "too many logins at once: try again in a moment",
        ));
    };
    let Ok(unlock) = Arc::clone(&state.unlocks).acquire_owned().await else {
        return Err(ApiError::busy("the server is stopping"));
    };
    let store = Arc::clone(&state.store);
    let name = user.clone();
    let st = Arc::clone(&state);
    // An unknown user name costs what a wrong passphrase does (carnet-core spends the KDF).
    // The permits and the failure's count go with the unlock, not with the request: a client
    // that hangs up mid-login neither frees a place for another unlock nor escapes the delays.
    let opened = blocking(move || {
        let _held = (waiting, unlock);
        let opened = Vault::unlock(store, &name, &passphrase);
        if matches!(opened, Err(Error::WrongPassphrase | Error::UnknownUser)) {
            let n = st.limiter.failed(&name, addr);
            st.note(&format!(
                "failed login from {addr} ({n} in a row for that user name)"
            ));
        }
        Ok(opened)
    })
    .await?;
    let vault = opened?;
    state.limiter.succeeded(&user);
    // Every answer waits until its access-log entry is durable (ReadLog::Synced, the default);
    // concurrent requests, of every session, share the fsyncs (the store's group commit,
    // carnet_storage::RelayHost).
    let role = vault.role();
    if vault.format() < 2 {
        return Err(ApiError::internal(
            "this vault is in format 1, which has no patient references: run `carnet key upgrade` before serving it",
        ));
    }
    let references_given = Arc::clone(&state.references_given);
    let st = Arc::clone(&state);
    let vault = blocking(move || {
        st.check_and_remember(&vault)?;
        // Patients registered before references get theirs (ADR 0021).
        // Once per server: it opens every patient record, which a login should not pay each
        // time (patients registered later without one get theirs when listed).
        if matches!(role, Role::Clinician | Role::Admin)
            && !references_given.load(std::sync::atomic::Ordering::Acquire)
        {
            give_references(&vault)?;
            references_given.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(vault)
    })
    .await?;
    let (token, expires) = state.sessions.open(vault)?;
    state.note(&format!("{} logged in from {addr}", role.name()));
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token.as_str(),
            "expires_at": rfc3339(Timestamp::from_unix_millis(
                expires
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            )),
            "user": user,
            "role": role.name(),
        })),
    )
        .into_response())
}

async fn logout<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
) -> Result<Response> {
    let s = session(
        &state,
        &headers,
        &[Role::Admin, Role::Clinician, Role::Auditor],
    )?;
    if let Some(t) = bearer(&headers) {
        state.sessions.close(t);
    }
    // The last holder drops the keys, after its log entries are durable.
    let st = Arc::clone(&state);
    blocking(move || {
        st.session_ended(&s);
        drop(s);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- patients ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPatientBody {
    id: String,
    name: Option<String>,
    birth_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lookup {
    id: String,
}

/// `limit` and `offset` of a list's query.
fn page(query: &Option<String>) -> Result<(usize, usize)> {
    let mut limit = MAX_PAGE;
    let mut offset = 0;
    for (k, v) in form(query)? {
        let n = || {
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a whole number")))
        };
        match k.as_str() {
            "limit" => limit = n()?,
            "offset" => offset = n()?,
            _ => {}
        }
    }
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok((limit, offset))
}

/// The query string's pairs, percent-decoded (an undecodable query is a bad request).
fn form(query: &Option<String>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|_| ApiError::bad_request("the query string is malformed"))
}

/// One page of `items`, with a `Link` to the next when more remain.
fn paginated(path: &str, items: Vec<Value>, limit: usize, offset: usize, extra: &str) -> Response {
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut r = Json(Value::Array(page)).into_response();
    if offset.saturating_add(limit) < total {
        let link = format!(
            "<{path}?{extra}limit={limit}&offset={}>; rel=\"next\"",
            offset + limit
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    r
}

async fn list_patients<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let (limit, offset) = page(&query)?;
    let items = waiting(move || {
        let v = current(&s)?;
        let mut patients = v.patients()?;
        if patients.iter().any(|p| p.reference.is_none()) {
            // Registered since by a program that gives no references.
            give_references(&v)?;
            patients = v.patients()?;
        }
        Ok(patients.iter().map(patient_json).collect::<Vec<_>>())
    })
    .await?;
    Ok(paginated("/v1/patients", items, limit, offset, ""))
}

/// The remembered answer of `key` for `user`, or the answer `f` gives (remembered when it
/// succeeded).
async fn idempotent<S: Store + 'static>(
    state: &State<S>,
    user: &str,
    route: &str,
    headers: &HeaderMap,
    f: impl std::future::Future<Output = Result<(StatusCode, Value)>>,
) -> Result<Response> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let v = v.as_bytes();
            if v.is_empty() || v.len() > 255 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must have 1 to 255 characters",
                ));
            }
            let mut h = Sha256::new();
            // Scoped to the user and the route: the same key sent elsewhere is a new request.
            for part in [user.as_bytes(), route.as_bytes(), v] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            Some(<[u8; 32]>::from(h.finalize()))
        }
    };
    if let Some(k) = &key {
        let seen = state.idempotent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, status, body)) = seen.get(k) {
            if at.elapsed() < IDEMPOTENCY_TTL {
                return Ok((*status, Json(body.clone())).into_response());
            }
        }
    }
    let (status, body) = f.await?;
    if let Some(k) = key {
        let mut seen = state.idempotent.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_IDEMPOTENCY_KEYS {
            seen.retain(|_, (at, _, _)| at.elapsed() < IDEMPOTENCY_TTL);
            if seen.len() >= MAX_IDEMPOTENCY_KEYS {
                seen.clear();
            }
        }
        seen.insert(k, (Instant::now(), status, body.clone()));
    }
    Ok((status, Json(body)).into_response())
}

async fn add_patient<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let b: NewPatientBody = parse(body)?;
    let user = s.user.clone();
    idempotent(&state, &user, uri.path(), &headers, async move {
        waiting(move || {
            let v = current(&s)?;
            let mut p = NewPatient::new(PatientId::new(b.id.clone())?);
            p.name = b.name.clone();
            p.birth_date = b
                .birth_date
                .as_deref()
                .map(carnet_core::BirthDate::parse)
                .transpose()?;
            // A vault without references (format 1) is refused at login.
            let r = v.add_patient(p)?.ok_or_else(|| {
                ApiError::internal("this vault gives patients no references: upgrade it")
            })?;
            Ok((StatusCode::CREATED, json!({"ref": r.to_string()})))
        })
        .await
    })
    .await
}

async fn lookup_patient<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let b: Lookup = parse(body)?;
    waiting(move || {
        let v = current(&s)?;
        let r = v.patient_ref(&PatientId::new(b.id.clone())?)?;
        Ok(Json(json!({"ref": r.to_string()})).into_response())
    })
    .await
}

/// Gives patients registered before references one (ADR 0021). While a key operation holds
/// the vault or is unfinished, that waits: a login or a list must not fail for it (those
/// patients are then listed without a reference, and get one later).
fn give_references<S: Store>(v: &Vault<Arc<S>>) -> Result<()> {
    match v.assign_references() {
        Ok(_) | Err(Error::Unfinished(_) | Error::Busy { .. } | Error::KeysChanged) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The patient a reference in a path names.
fn by_ref<S: Store>(vault: &Vault<Arc<S>>, reference: &str) -> Result<PatientId> {
    let r: PatientRef = reference.parse()?;
    Ok(vault.patient_by_ref(&r)?)
}

async fn show_patient<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    Path(pref): Path<String>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    waiting(move || {
        let v = current(&s)?;
        let id = by_ref(&v, &pref)?;
        Ok(Json(patient_json(&v.patient(&id)?)).into_response())
    })
    .await
}

// ---- notes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteInput {
    body: Option<String>,
    body_base64: Option<String>,
    author: Option<String>,
    kind: Option<String>,
}

impl NoteInput {
    /// The note's bytes (kept zeroizing: a request may be run more than once, [`waiting`]).
    fn bytes(&mut self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let bytes = match (self.body.take(), self.body_base64.take()) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| ApiError::bad_request("body_base64 is not valid base64"))?,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of body and body_base64",
                ))
            }
        };
        // Refused now if it is over the cap, before any work.
        drop(NoteBody::new(bytes.clone())?);
        Ok(zeroize::Zeroizing::new(bytes))
    }
}

async fn list_notes<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    Path(pref): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let (limit, offset) = page(&query)?;
    let bodies = form(&query)?
        .iter()
        .any(|(k, v)| k == "bodies" && (v == "true" || v == "1"));
    let path = format!("/v1/patients/{pref}/notes");
    let items = waiting(move || {
        let v = current(&s)?;
        let id = by_ref(&v, &pref)?;
        let notes = if bodies {
            v.read_notes(&id)?
        } else {
            v.notes(&id)?
        };
        Ok(notes.iter().map(note_json).collect::<Vec<_>>())
    })
    .await?;
    let extra = if bodies { "bodies=true&" } else { "" };
    Ok(paginated(&path, items, limit, offset, extra))
}

async fn add_note<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Path(pref): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let mut input: NoteInput = parse(body)?;
    let bytes = input.bytes()?;
    let user = s.user.clone();
    idempotent(&state, &user, uri.path(), &headers, async move {
        waiting(move || {
            let v = current(&s)?;
            let id = by_ref(&v, &pref)?;
            let mut note = NewNote::new(NoteBody::new(bytes.to_vec())?);
            note.author = input.author.clone();
            note.kind = input.kind.clone();
            let note_id = v.add_note(&id, note)?;
            Ok((StatusCode::CREATED, json!({"id": note_id.to_string()})))
        })
        .await
    })
    .await
}

fn note_id(s: &str) -> Result<NoteId> {
    Ok(s.parse()?)
}

async fn show_note<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    Path((pref, note)): Path<(String, String)>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    waiting(move || {
        let v = current(&s)?;
        let id = by_ref(&v, &pref)?;
        let n = v.note(&id, &note_id(&note)?)?;
        Ok(Json(note_json(&n)).into_response())
    })
    .await
}

async fn note_versions<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    Path((pref, note)): Path<(String, String)>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    waiting(move || {
        let v = current(&s)?;
        let id = by_ref(&v, &pref)?;
        let versions = v.note_history(&id, &note_id(&note)?)?;
        Ok(Json(Value::Array(versions.iter().map(note_json).collect())).into_response())
    })
    .await
}

async fn amend_note<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Path((pref, note)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let mut input: NoteInput = parse(body)?;
    if input.kind.is_some() {
        return Err(ApiError::bad_request("an amendment keeps the note's kind"));
    }
    let bytes = input.bytes()?;
    let user = s.user.clone();
    idempotent(&state, &user, uri.path(), &headers, async move {
        waiting(move || {
            let v = current(&s)?;
            let id = by_ref(&v, &pref)?;
            let n = note_id(&note)?;
            let body = NoteBody::new(bytes.to_vec())?;
            let version = v.amend_note(&id, &n, body, input.author.clone())?;
            Ok((
                StatusCode::CREATED,
                json!({"id": n.to_string(), "version": version}),
            ))
        })
        .await
    })
    .await
}

// ---- the whole record, and the administrator's checks ----

async fn export<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    Path(pref): Path<String>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    waiting_long(move || {
        let v = current(&s)?;
        let id = by_ref(&v, &pref)?;
        let (p, notes) = v.export(&id)?;
        Ok(Json(export_json(&p, &notes)).into_response())
    })
    .await
}

async fn verify<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
) -> Result<Response> {
    let s = session(&state, &headers, &[Role::Admin])?;
    waiting_long(move || {
        let v = current(&s)?;
        let report = v.verify(&mut |_, _| {})?;
        Ok(Json(verify_json(&report)).into_response())
    })
    .await
}

async fn key_status<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
) -> Result<Response> {
    let s = session(&state, &headers, &[Role::Admin])?;
    waiting(move || {
        let v = current(&s)?;
        Ok(Json(key_status_json(&v.key_status()?)).into_response())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    text: String,
    patient_ref: Option<String>,
}

async fn search<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let s = session(&state, &headers, CLINICAL)?;
    let b: Search = parse(body)?;
    if b.text.is_empty() {
        return Err(ApiError::bad_request("the search text is empty"));
    }
    waiting_long(move || {
        let v = current(&s)?;
        let patient = b
            .patient_ref
            .as_deref()
            .map(|r| by_ref(&v, r))
            .transpose()?;
        let hits = v.search(&b.text, patient.as_ref())?;
        Ok(Json(Value::Array(hits.iter().map(search_hit_json).collect())).into_response())
    })
    .await
}

async fn audit<S: Store + 'static>(
    Axum(state): Axum<Arc<State<S>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let s = session(&state, &headers, &[Role::Auditor, Role::Admin])?;
    let mut since = None;
    let mut user = None;
    let mut patient_ref = None;
    for (k, v) in form(&query)? {
        match k.as_str() {
            "since" => {
                since = Some(carnet_json::parse_rfc3339(&v).ok_or_else(|| {
                    ApiError::bad_request(
                        "since must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z",
                    )
                })?)
            }
            "user" => user = Some(v),
            "patient_ref" => patient_ref = Some(v),
            _ => {}
        }
    }
    waiting_long(move || {
        let v = current(&s)?;
        let mut filter = carnet_core::AuditFilter::default();
        filter.since = since;
        filter.user = user.clone();
        // An auditor cannot open patients: the reference is resolved as the vault allows.
        filter.patient = patient_ref.as_deref().map(|r| by_ref(&v, r)).transpose()?;
        let entries = v.audit(&filter)?;
        Ok(Json(Value::Array(entries.iter().map(audit_entry_json).collect())).into_response())
    })
    .await
}
