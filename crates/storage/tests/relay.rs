//! The local relay: a store lent through a Unix socket behaves as the store itself (the
//! conformance suite), a backup's freeze holds every write and lapses at its bound, and a lock
//! taken through the relay is released when its holder goes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use carnet_storage::relay::{self, Listening};
use carnet_storage::{
    conformance, Batch, DocName, MemStore, RelayHost, RelayStore, SledStore, Space, Store,
    StoreError,
};

const S: Space = Space::new("s");
const NAMES: &[Space] = &[S, Space::new("a"), Space::new("ab")];
const DOCS: &[DocName] = conformance::DOCUMENTS;

struct Lent<H> {
    host: Arc<RelayHost<H>>,
    client: RelayStore,
    _listening: Listening,
    _dir: tempfile::TempDir,
}

fn lend<H: Store + 'static>(make: impl FnOnce(&std::path::Path) -> H, limit: Duration) -> Lent<H> {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(RelayHost::new(make(dir.path()), NAMES, DOCS).with_freeze_limit(limit));
    let listening = relay::listen(dir.path(), Arc::clone(&host)).unwrap();
    let client = RelayStore::connect(dir.path())
        .unwrap()
        .expect("a relay answers");
    Lent {
        host,
        client,
        _listening: listening,
        _dir: dir,
    }
}

fn put(s: &impl Store, key: &[u8], value: &[u8]) {
    let mut b = Batch::new();
    b.put(S, key.to_vec(), value.to_vec());
    s.commit(b).unwrap();
}

#[test]
fn a_store_lent_through_the_relay_conforms() {
    let kept = std::cell::RefCell::new(Vec::new());
    conformance::run(|| {
        let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
        let client = RelayStore::connect(lent._dir.path()).unwrap().unwrap();
        kept.borrow_mut().push(lent);
        client
    });
}

#[test]
fn a_sled_store_lent_through_the_relay_conforms() {
    let kept = std::cell::RefCell::new(Vec::new());
    conformance::run(|| {
        let lent = lend(
            |d| SledStore::create(&d.join("v")).unwrap(),
            relay::FREEZE_LIMIT,
        );
        let client = RelayStore::connect(lent._dir.path()).unwrap().unwrap();
        kept.borrow_mut().push(lent);
        client
    });
}

#[test]
fn writes_of_the_host_and_of_clients_land_in_one_store_and_long_scans_page() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    // More than a page of entries (1,000), each written by one side or the other.
    for i in 0..2500u32 {
        let key = i.to_be_bytes();
        if i % 2 == 0 {
            put(&*lent.host, &key, b"host");
        } else {
            put(&lent.client, &key, b"client");
        }
    }
    let seen: Vec<_> = lent
        .client
        .scan_prefix(S, b"")
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(seen.len(), 2500);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    assert_eq!(
        lent.host.get(S, &1u32.to_be_bytes()).unwrap().unwrap(),
        b"client"
    );
    // A scan dropped half-way leaves the client usable.
    let mut partial = lent.client.scan_prefix(S, b"");
    partial.next().unwrap().unwrap();
    drop(partial);
    assert_eq!(
        lent.client.get(S, &0u32.to_be_bytes()).unwrap().unwrap(),
        b"host"
    );
}

#[test]
fn a_freeze_holds_every_write_until_the_thaw() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    let frozen = lent.client.freeze().unwrap();
    let host = Arc::clone(&lent.host);
    let writer = std::thread::spawn(move || {
        put(&*host, b"k", b"during");
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Reads go on, and see nothing of the held write.
    assert_eq!(lent.client.get(S, b"k").unwrap(), None);
    let thawed = Instant::now();
    frozen.thaw().unwrap();
    let written = writer.join().unwrap();
    assert!(written >= thawed, "the host's write waited for the thaw");
    assert_eq!(lent.client.get(S, b"k").unwrap().unwrap(), b"during");
}

#[test]
fn a_freeze_held_too_long_lapses_and_its_thaw_says_so() {
    let lent = lend(|_| MemStore::new(), Duration::from_millis(200));
    let frozen = lent.client.freeze().unwrap();
    // The write waits at most for the bound, then lands.
    put(&*lent.host, b"k", b"v");
    let e = frozen.thaw().unwrap_err();
    assert!(e.to_string().contains("may not be one moment"), "{e}");
    // A freeze that ends in time is whole.
    lent.client.freeze().unwrap().thaw().unwrap();
}

#[test]
fn a_key_operation_lock_taken_through_the_relay_is_seen_and_released() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    let lock = lent
        .client
        .lock_key_operations()
        .unwrap()
        .expect("memory has the lock");
    assert_eq!(lent.host.key_operations_locked().unwrap(), Some(true));
    assert!(
        lent.host.lock_key_operations().is_err(),
        "held by the client"
    );
    drop(lock);
    assert_eq!(lent.host.key_operations_locked().unwrap(), Some(false));
    // (A killed holder, whose socket the kernel closes, is tested end to end: tests/tests/serve.rs.)
}

#[test]
fn no_socket_or_a_dead_servers_socket_is_no_relay_and_a_stopped_relay_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    assert!(RelayStore::connect(dir.path()).unwrap().is_none());
    let host = Arc::new(RelayHost::new(MemStore::new(), NAMES, DOCS));
    let listening = relay::listen(dir.path(), Arc::clone(&host)).unwrap();
    let path = listening.path().to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(listening);
    assert!(!path.exists(), "the socket is removed at the stop");
    // A socket left by a killed server: bound, never listened to again.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(RelayStore::connect(dir.path()).unwrap().is_none());
    // And a new server replaces it.
    let _again = relay::listen(dir.path(), host).unwrap();
    assert!(RelayStore::connect(dir.path()).unwrap().is_some());
}

#[test]
fn a_freeze_ends_when_its_client_goes_and_two_freezes_do_not_stack() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    let frozen = lent.client.freeze().unwrap();
    let e = lent.client.freeze().unwrap_err();
    assert!(e.to_string().contains("another backup"), "{e}");
    // A backup killed while it froze: its connection closes, and writes go on at once.
    drop(frozen);
    let started = Instant::now();
    put(&*lent.host, b"k", b"v");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_batch_larger_than_a_frame_is_committed_whole_or_not_at_all() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    let big = vec![7u8; 40 << 20];
    let mut b = Batch::new();
    // 280 MiB: more than a frame (256 MiB), as a rotation's batch of large notes can be.
    for i in 0..7u8 {
        b.put(S, vec![i], big.clone());
    }
    lent.client.commit(b).unwrap();
    assert_eq!(lent.host.get(S, &[6]).unwrap().unwrap().len(), 40 << 20);
    // A precondition that fails, sent in the first part: nothing of any part lands.
    let mut b = Batch::new();
    b.require(S, vec![0u8], None);
    for i in 10..17u8 {
        b.put(S, vec![i], big.clone());
    }
    assert!(matches!(lent.client.commit(b), Err(StoreError::Conflict)));
    assert_eq!(lent.host.get(S, &[10]).unwrap(), None);
    assert_eq!(lent.host.get(S, &[16]).unwrap(), None);
    // And the connection is in step after it.
    assert!(lent.client.get(S, &[0]).unwrap().is_some());
}

#[test]
fn unknown_names_are_refused_without_harm_and_a_restarted_server_is_not_gone_on_with() {
    let lent = lend(|_| MemStore::new(), relay::FREEZE_LIMIT);
    for i in 0..100 {
        let junk: &'static str = Box::leak(format!("junk{i}").into_boxed_str());
        let e = lent.client.get(Space::new(junk), b"k").unwrap_err();
        assert!(matches!(e, StoreError::Unsupported(_)), "{e}");
    }
    put(&lent.client, b"k", b"v");
    // The server restarts on the same directory (a new lending): this client's new connections
    // are refused rather than sent to a server that knows nothing of its locks.
    let dir = lent._dir.path().to_path_buf();
    let Lent {
        client,
        _listening,
        host,
        _dir,
    } = lent;
    drop(_listening);
    let _again =
        relay::listen(&dir, Arc::new(RelayHost::new(MemStore::new(), NAMES, DOCS))).unwrap();
    // (A freeze always opens a connection of its own.)
    let e = client.freeze().unwrap_err();
    assert!(e.to_string().contains("restarted"), "{e}");
    drop((host, _dir));
}

#[test]
fn a_stop_does_not_need_the_socket_to_be_there() {
    let dir = tempfile::tempdir().unwrap();
    let listening = relay::listen(
        dir.path(),
        Arc::new(RelayHost::new(MemStore::new(), NAMES, DOCS)),
    )
    .unwrap();
    std::fs::remove_file(listening.path()).unwrap();
    let started = Instant::now();
    drop(listening);
    assert!(started.elapsed() < Duration::from_secs(2));
}
