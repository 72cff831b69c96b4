//! The PostgreSQL backend against a real server: a throwaway cluster the test starts itself
//! (`pg_cluster`), or `CARNET_TEST_POSTGRES_URL`. Skipped, saying so, when PostgreSQL is not
//! installed, unless `CARNET_REQUIRE_POSTGRES` is set (CI sets it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};

use carnet_storage::pg_cluster::TestCluster;
use carnet_storage::{conformance, Batch, PgStore, Space, Store, StoreError};

const A: Space = Space::new("a");

#[test]
fn postgres_backend_conforms_and_isolates_vaults() {
    let Some(pg) = TestCluster::start_or_skip("postgres_backend_conforms") else {
        return;
    };
    // One fresh vault per check, all in one database.
    let n = AtomicUsize::new(0);
    conformance::run(|| {
        let name = format!("conf-{}", n.fetch_add(1, Ordering::Relaxed));
        PgStore::create(&pg.uri(&name)).unwrap()
    });

    // Vaults in one database see nothing of each other.
    let one = PgStore::create(&pg.uri("clinic-1")).unwrap();
    let two = PgStore::create(&pg.uri("clinic-2")).unwrap();
    let mut b = Batch::new();
    b.put(A, b"k".to_vec(), b"one".to_vec());
    one.commit(b).unwrap();
    assert_eq!(two.get(A, b"k").unwrap(), None);
    assert_eq!(two.scan_prefix(A, b"").count(), 0);
    let mut b = Batch::new();
    b.require(A, b"k".to_vec(), Some(b"one".to_vec()));
    b.put(A, b"k".to_vec(), b"two".to_vec());
    assert!(matches!(two.commit(b), Err(StoreError::Conflict)));
    assert_eq!(one.get(A, b"k").unwrap().unwrap(), b"one");

    // Creating an existing vault, or opening a missing one, is a clear error.
    assert!(matches!(
        PgStore::create(&pg.uri("clinic-1")),
        Err(StoreError::NotEmpty(_))
    ));
    assert!(matches!(
        PgStore::open(&pg.uri("nobody")),
        Err(StoreError::NotFound(_))
    ));
    assert!(PgStore::exists(&pg.uri("clinic-1")).unwrap());
    assert!(!PgStore::exists(&pg.uri("nobody")).unwrap());
    let again = PgStore::open(&pg.uri("clinic-1")).unwrap();
    assert_eq!(again.get(A, b"k").unwrap().unwrap(), b"one");
}

#[test]
fn a_scan_crosses_pages_in_order_and_stops_at_its_prefix() {
    let Some(pg) = TestCluster::start_or_skip("a_scan_crosses_pages") else {
        return;
    };
    let s = PgStore::create(&pg.uri("pages")).unwrap();
    let mut b = Batch::new();
    for i in 0u32..1500 {
        b.put(A, [&[7u8][..], &i.to_be_bytes()].concat(), vec![1]);
    }
    b.put(A, vec![7, 0xff, 0xff, 0xff, 0xff, 0xff], vec![2]);
    b.put(A, vec![8], vec![3]);
    s.commit(b).unwrap();
    let keys: Vec<Vec<u8>> = s.scan_prefix(A, &[7]).map(|r| r.unwrap().0).collect();
    assert_eq!(keys.len(), 1501);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.scan_prefix(A, &[]).count(), 1502);
    assert_eq!(s.scan_prefix(A, &[0xff]).count(), 0);
}

#[test]
fn the_key_operation_lock_is_seen_from_other_connections_and_testing_it_takes_nothing() {
    let Some(pg) = TestCluster::start_or_skip("the_key_operation_lock") else {
        return;
    };
    let one = PgStore::create(&pg.uri("locked")).unwrap();
    let other = PgStore::open(&pg.uri("locked")).unwrap();
    let elsewhere = PgStore::create(&pg.uri("another-vault")).unwrap();
    assert_eq!(other.key_operations_locked().unwrap(), Some(false));
    let held = one.lock_key_operations().unwrap();
    assert!(held.is_some());
    assert_eq!(other.key_operations_locked().unwrap(), Some(true));
    assert_eq!(elsewhere.key_operations_locked().unwrap(), Some(false));
    assert!(matches!(
        other.lock_key_operations(),
        Err(StoreError::Conflict)
    ));
    drop(held);
    // Testing the lock, however often, never makes a taker fail (CI once saw a rotation
    // refused because a desk's test held the lock for an instant).
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                other.key_operations_locked().unwrap();
            }
        });
        let refused = (0..200)
            .filter(|_| one.lock_key_operations().is_err())
            .count();
        stop.store(true, Ordering::SeqCst);
        assert_eq!(refused, 0, "takers refused while the lock was only tested");
    });
    assert_eq!(other.key_operations_locked().unwrap(), Some(false));
}
