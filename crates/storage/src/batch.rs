//! Spaces, operations and atomic batches.

/// Whether `name` is 1 to 32 bytes of ASCII letters, digits or `-` (and upper case and `_` when
/// `lenient`): names become file names and key prefixes, so they stay plain.
pub(crate) const fn valid_name(name: &str, lenient: bool) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 32 {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == b'-'
            || (lenient && (c.is_ascii_uppercase() || c == b'_'));
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// A named space of records (a table). Names are short ASCII identifiers fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Space(&'static str);

impl Space {
    /// A space named `name`: 1 to 32 bytes of ASCII letters, digits, `-` or `_`.
    ///
    /// # Panics
    /// At compile time (in a `const`) or on first use, if the name breaks that rule: space names
    /// are constants written by the programmer, never input.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            valid_name(name, true),
            "space name must be 1 to 32 ASCII letters, digits, - or _"
        );
        Space(name)
    }

    /// The space's name.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// The name of a document (see [`crate::Store::read_doc`]): 1 to 32 bytes of lower-case ASCII
/// letters, digits or `-`. Names are constants written by the programmer, never input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DocName(&'static str);

impl DocName {
    /// A document named `name`.
    ///
    /// # Panics
    /// At compile time (in a `const`) or on first use, if the name breaks the rule above.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            valid_name(name, false),
            "document name must be 1 to 32 lower-case ASCII letters, digits or -"
        );
        DocName(name)
    }

    /// The document's name.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// One write in a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`, replacing any previous value.
    Put {
        /// The space written.
        space: Space,
        /// The record's key.
        key: Vec<u8>,
        /// The record's new value.
        value: Vec<u8>,
    },
    /// Remove the record under `key`, if any.
    Delete {
        /// The space written.
        space: Space,
        /// The record's key.
        key: Vec<u8>,
    },
}

/// A condition on a record's current value that must hold for a [`Batch`] to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precondition {
    /// The space read.
    pub space: Space,
    /// The record's key.
    pub key: Vec<u8>,
    /// The value the record must currently have; `None`: the record must be absent.
    pub expected: Option<Vec<u8>>,
}

/// Writes applied together, atomically, if every precondition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The conditions checked before anything is written.
    pub preconditions: Vec<Precondition>,
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` under `key`.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            space,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete {
            space,
            key: key.into(),
        });
    }

    /// Requires the record under `key` to hold `expected` (`None`: to be absent).
    pub fn require(&mut self, space: Space, key: impl Into<Vec<u8>>, expected: Option<Vec<u8>>) {
        self.preconditions.push(Precondition {
            space,
            key: key.into(),
            expected,
        });
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}
