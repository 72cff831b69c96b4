//! The behaviour every [`Store`] backend must show, as a reusable test suite.
//!
//! A backend's tests call [`run`] with a function that makes a fresh, empty store:
//!
//! ```
//! carnet_storage::conformance::run(carnet_storage::MemStore::new);
//! ```
//!
//! Each check panics with a message naming the property that failed.

use crate::{Batch, DocName, Space, Store, StoreError};

const A: Space = Space::new("a");
const AB: Space = Space::new("ab");
const DOC: DocName = DocName::new("doc");
const DOC2: DocName = DocName::new("doc-2");

/// The spaces the suite writes (for a [`crate::RelayHost`] under test).
pub const SPACES: &[Space] = &[A, AB];
/// The documents the suite writes.
pub const DOCUMENTS: &[DocName] = &[DOC, DOC2];

fn scan<S: Store>(s: &S, space: Space, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    s.scan_prefix(space, prefix)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("scan_prefix failed: {e}"))
}

fn commit<S: Store>(s: &S, b: Batch) {
    s.commit(b).unwrap_or_else(|e| panic!("commit failed: {e}"));
}

fn get<S: Store>(s: &S, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    s.get(space, key)
        .unwrap_or_else(|e| panic!("get failed: {e}"))
}

/// Runs every check against stores made by `make` (one fresh store per check).
pub fn run<S: Store>(make: impl Fn() -> S) {
    empty_store_reads_nothing(&make());
    put_get_delete(&make());
    spaces_are_disjoint(&make());
    prefix_scan_is_ordered_and_bounded(&make());
    preconditions_guard_the_whole_batch(&make());
    batch_ops_apply_in_order(&make());
    documents_are_replaced_whole_or_appended(&make());
    large_values_round_trip(&make());
    replace_all_swaps_every_record(&make());
}

fn replace_all_swaps_every_record<S: Store>(s: &S) {
    let mut b = Batch::new();
    b.put(A, b"old".to_vec(), b"1".to_vec());
    b.put(AB, b"keep".to_vec(), b"2".to_vec());
    commit(s, b);
    s.replace_doc(DOC, b"doc")
        .unwrap_or_else(|e| panic!("replace_doc failed: {e}"));
    // The replacement is computed from the store itself, as an erasure does.
    let mut next: Vec<Result<crate::SpacedEntry, StoreError>> = scan(s, AB, b"")
        .into_iter()
        .map(|(k, v)| Ok((AB, k, v)))
        .collect();
    next.push(Ok((A, b"new".to_vec(), b"3".to_vec())));
    s.replace_all(&mut next.into_iter())
        .unwrap_or_else(|e| panic!("replace_all failed: {e}"));
    assert_eq!(get(s, A, b"old"), None, "records not given are gone");
    assert_eq!(get(s, A, b"new").as_deref(), Some(&b"3"[..]));
    assert_eq!(get(s, AB, b"keep").as_deref(), Some(&b"2"[..]));
    assert_eq!(
        s.read_doc(DOC).ok().flatten().as_deref(),
        Some(&b"doc"[..]),
        "documents stay"
    );
    let mut failing = vec![
        Ok((A, b"x".to_vec(), b"x".to_vec())),
        Err(StoreError::Conflict),
    ]
    .into_iter();
    assert!(
        s.replace_all(&mut failing).is_err(),
        "an iterator error aborts"
    );
    assert_eq!(
        get(s, A, b"new").as_deref(),
        Some(&b"3"[..]),
        "an aborted replacement changes nothing"
    );
    assert_eq!(get(s, A, b"x"), None);
    let mut b = Batch::new();
    b.put(A, b"after".to_vec(), b"4".to_vec());
    commit(s, b);
    s.flush()
        .unwrap_or_else(|e| panic!("flush after replace_all failed: {e}"));
    assert_eq!(
        get(s, A, b"after").as_deref(),
        Some(&b"4"[..]),
        "the store works after a replacement"
    );
}

fn empty_store_reads_nothing<S: Store>(s: &S) {
    assert_eq!(get(s, A, b"k"), None, "an empty store has no records");
    assert!(scan(s, A, b"").is_empty(), "an empty store scans empty");
    assert_eq!(
        s.read_doc(DOC).ok().flatten(),
        None,
        "an empty store has no document"
    );
    s.flush()
        .unwrap_or_else(|e| panic!("flush of an empty store failed: {e}"));
}

fn put_get_delete<S: Store>(s: &S) {
    let mut b = Batch::new();
    b.put(A, b"k".to_vec(), b"v1".to_vec());
    commit(s, b);
    assert_eq!(
        get(s, A, b"k").as_deref(),
        Some(&b"v1"[..]),
        "a put is read back"
    );
    let mut b = Batch::new();
    b.put(A, b"k".to_vec(), b"v2".to_vec());
    commit(s, b);
    assert_eq!(
        get(s, A, b"k").as_deref(),
        Some(&b"v2"[..]),
        "a put replaces"
    );
    let mut b = Batch::new();
    b.delete(A, b"k".to_vec());
    commit(s, b);
    assert_eq!(get(s, A, b"k"), None, "a delete removes");
    let mut b = Batch::new();
    b.delete(A, b"never".to_vec());
    commit(s, b);
}

fn spaces_are_disjoint<S: Store>(s: &S) {
    // "a" + "bc" and "ab" + "c" must not collide, whatever the backend's key encoding.
    let mut b = Batch::new();
    b.put(A, b"bc".to_vec(), b"in a".to_vec());
    b.put(AB, b"c".to_vec(), b"in ab".to_vec());
    commit(s, b);
    assert_eq!(get(s, A, b"bc").as_deref(), Some(&b"in a"[..]));
    assert_eq!(get(s, AB, b"c").as_deref(), Some(&b"in ab"[..]));
    assert_eq!(get(s, A, b"c"), None, "spaces do not share keys");
    assert_eq!(scan(s, A, b"").len(), 1, "a scan stays in its space");
    assert_eq!(scan(s, AB, b"").len(), 1, "a scan stays in its space");
}

fn prefix_scan_is_ordered_and_bounded<S: Store>(s: &S) {
    let mut b = Batch::new();
    for k in [&b"p\x02"[..], b"p\x01\xff", b"p\x01", b"q", b"o\xff", b"p"] {
        b.put(A, k.to_vec(), k.to_vec());
    }
    commit(s, b);
    let keys: Vec<Vec<u8>> = scan(s, A, b"p").into_iter().map(|(k, _)| k).collect();
    let want: Vec<Vec<u8>> = vec![
        b"p".to_vec(),
        b"p\x01".to_vec(),
        b"p\x01\xff".to_vec(),
        b"p\x02".to_vec(),
    ];
    assert_eq!(
        keys, want,
        "prefix scan returns exactly the prefixed keys, ascending"
    );
    for (k, v) in scan(s, A, b"") {
        assert_eq!(k, v, "scan pairs each key with its own value");
    }
}

fn preconditions_guard_the_whole_batch<S: Store>(s: &S) {
    let mut b = Batch::new();
    b.require(A, b"m".to_vec(), None);
    b.put(A, b"m".to_vec(), b"1".to_vec());
    commit(s, b);

    // Expected absent, but present: nothing applies.
    let mut b = Batch::new();
    b.put(A, b"other".to_vec(), b"x".to_vec());
    b.require(A, b"m".to_vec(), None);
    b.put(A, b"m".to_vec(), b"2".to_vec());
    assert!(
        matches!(s.commit(b), Err(StoreError::Conflict)),
        "absent-precondition conflicts"
    );
    assert_eq!(
        get(s, A, b"other"),
        None,
        "a conflicting batch applies nothing"
    );
    assert_eq!(get(s, A, b"m").as_deref(), Some(&b"1"[..]));

    // Compare-and-swap on the current value.
    let mut b = Batch::new();
    b.require(A, b"m".to_vec(), Some(b"stale".to_vec()));
    b.put(A, b"m".to_vec(), b"3".to_vec());
    assert!(
        matches!(s.commit(b), Err(StoreError::Conflict)),
        "stale CAS conflicts"
    );
    let mut b = Batch::new();
    b.require(A, b"m".to_vec(), Some(b"1".to_vec()));
    b.put(A, b"m".to_vec(), b"3".to_vec());
    commit(s, b);
    assert_eq!(
        get(s, A, b"m").as_deref(),
        Some(&b"3"[..]),
        "a matching CAS applies"
    );
}

fn batch_ops_apply_in_order<S: Store>(s: &S) {
    let mut b = Batch::new();
    b.put(A, b"x".to_vec(), b"1".to_vec());
    b.delete(A, b"x".to_vec());
    b.put(A, b"y".to_vec(), b"1".to_vec());
    b.put(A, b"y".to_vec(), b"2".to_vec());
    commit(s, b);
    assert_eq!(get(s, A, b"x"), None, "later ops in a batch win");
    assert_eq!(
        get(s, A, b"y").as_deref(),
        Some(&b"2"[..]),
        "later ops in a batch win"
    );
}

fn documents_are_replaced_whole_or_appended<S: Store>(s: &S) {
    let read = |n| {
        s.read_doc(n)
            .unwrap_or_else(|e| panic!("read_doc failed: {e}"))
    };
    s.replace_doc(DOC, b"first")
        .unwrap_or_else(|e| panic!("replace_doc failed: {e}"));
    assert_eq!(read(DOC).as_deref(), Some(&b"first"[..]));
    s.replace_doc(DOC, b"2nd")
        .unwrap_or_else(|e| panic!("replace_doc failed: {e}"));
    assert_eq!(
        read(DOC).as_deref(),
        Some(&b"2nd"[..]),
        "a shorter document replaces a longer one whole"
    );
    s.append_doc(DOC, b"+more")
        .unwrap_or_else(|e| panic!("append_doc failed: {e}"));
    assert_eq!(
        read(DOC).as_deref(),
        Some(&b"2nd+more"[..]),
        "an append extends"
    );
    s.append_doc(DOC2, b"new")
        .unwrap_or_else(|e| panic!("append_doc failed: {e}"));
    assert_eq!(
        read(DOC2).as_deref(),
        Some(&b"new"[..]),
        "an append creates"
    );
    assert_eq!(
        read(DOC).as_deref(),
        Some(&b"2nd+more"[..]),
        "documents are separate"
    );
    assert!(scan(s, A, b"").is_empty(), "a document is not a record");
}

fn large_values_round_trip<S: Store>(s: &S) {
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let mut b = Batch::new();
    b.put(A, b"big".to_vec(), big.clone());
    commit(s, b);
    s.flush().unwrap_or_else(|e| panic!("flush failed: {e}"));
    assert!(get(s, A, b"big") == Some(big), "a 3 MiB value round-trips");
}
