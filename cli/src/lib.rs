//! The pure parsers of the `carnet` binary, in a library so that the fuzz targets in `fuzz/`
//! can reach them (docs/testing.md). Internal to the command line: not a stable API; embed
//! `carnet-core` instead.
#![forbid(unsafe_code)]

pub mod import_line;
pub mod timestamp;

/// Entry points for the fuzz targets, compiled only under `cfg(fuzzing)`.
#[cfg(fuzzing)]
pub mod fuzzing {
    /// The import line parser: any bytes, no panic, and no rejection message that repeats a
    /// quoted piece of the input (which could be note text).
    pub fn import_line(data: &[u8]) {
        if let Err(why) = crate::import_line::parse(data) {
            assert!(!why.contains('\n'), "one-line messages: {why}");
            // Messages are built from our own words: no double quote, and between
            // backticks only the names of the fields.
            assert!(!why.contains('"'), "a message quotes the input: {why}");
            assert!(
                why.split('`')
                    .skip(1)
                    .step_by(2)
                    .all(|quoted| crate::import_line::FIELDS.contains(&quoted)),
                "a message quotes the input: {why}"
            );
        }
    }
}
