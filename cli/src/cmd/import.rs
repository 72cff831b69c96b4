//! `carnet import FILE` (JSON Lines)

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Instant;

use carnet_cli::import_line::parse;
use sha2::{Digest, Sha256};

use crate::args::{Global, ImportArgs};
use crate::context;
use crate::error::CliError;
use crate::progress::Progress;
use crate::render;

/// Longest line accepted: a 16 MiB body, JSON-escaped, fits easily.
const MAX_LINE_BYTES: u64 = 128 * 1024 * 1024;
/// Rejected lines reported before the rest are only counted.
const MAX_REPORTED: usize = 20;

/// One line's bytes, or why it was rejected before parsing.
type RawLine = Result<Vec<u8>, String>;

/// Reads the file line by line: (line number, bytes), blank lines skipped.
struct Lines {
    reader: BufReader<File>,
    number: u64,
    /// SHA-256 of every byte read so far: the file's identity for resuming an import.
    hash: Sha256,
}

impl Lines {
    fn open(path: &Path) -> Result<Self, CliError> {
        let f = File::open(path)
            .map_err(|e| CliError::failure(format!("cannot open {}: {e}", path.display())))?;
        Ok(Lines {
            reader: BufReader::with_capacity(1 << 20, f),
            number: 0,
            hash: Sha256::new(),
        })
    }

    fn next_line(&mut self) -> Result<Option<(u64, RawLine)>, CliError> {
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| CliError::failure(format!("cannot read the import file: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            self.hash.update(&buf);
            self.number += 1;
            if buf.len() as u64 > MAX_LINE_BYTES {
                // Skip the rest of the overlong line (the file is rejected: no hash needed).
                self.reader
                    .skip_until(b'\n')
                    .map_err(|e| CliError::failure(format!("cannot read the import file: {e}")))?;
                return Ok(Some((
                    self.number,
                    Err("the line is longer than 128 MiB".into()),
                )));
            }
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some((self.number, Ok(buf))));
        }
    }
}

pub fn run(g: &Global, a: ImportArgs) -> Result<(), CliError> {
    // Pass 1: check every line, write nothing.
    let mut lines = Lines::open(&a.file)?;
    let (mut total, mut rejected) = (0u64, 0usize);
    while let Some((n, line)) = lines.next_line()? {
        total += 1;
        if let Err(why) = line.and_then(|b| parse(&b).map(|_| ())) {
            rejected += 1;
            if rejected <= MAX_REPORTED {
                eprintln!("carnet: {}: line {n}: {why}", a.file.display());
            }
        }
    }
    if rejected > 0 {
        if rejected > MAX_REPORTED {
            eprintln!(
                "carnet: … and {} more rejected lines",
                rejected - MAX_REPORTED
            );
        }
        return Err(CliError::failure(format!(
            "{rejected} line(s) rejected; nothing was imported"
        ))
        .hint("fix the lines above and run the import again"));
    }

    let source: [u8; 32] = lines.hash.finalize().into();

    // Pass 2: import in atomic batches, resuming an interrupted import of the same file.
    let vault = context::unlock(g)?;
    let started = Instant::now();
    let mut import = vault.import_resumable(source, a.again)?;
    if import.already_complete() {
        if !g.quiet {
            eprintln!(
                "carnet: this file was already imported completely ({} notes); nothing to do (use --again to import it once more)",
                import.already_imported()
            );
        }
        return if g.json {
            render::print_json(&serde_json::json!({"patients_created": 0, "notes_imported": 0}))
        } else {
            render::print("Nothing imported: this file was already imported.\n")
        };
    }
    let skip = import.already_imported();
    if let Some(n) = import.abandoned() {
        if !g.quiet {
            eprintln!(
                "carnet: note: an interrupted import of another file ({n} notes imported) will not be resumed"
            );
        }
    }
    if skip > 0 && !g.quiet {
        eprintln!("carnet: resuming an interrupted import of this file: {skip} notes were already imported");
    }
    let bar = Progress::new(g, "importing", total);
    let mut lines = Lines::open(&a.file)?;
    // Lines already imported by an interrupted run are skipped; the rest are parsed as they
    // are read, and sealed and written on both cores (`Import::add_all`).
    let mut skipped = 0u64;
    let mut changed: Option<CliError> = None;
    let items = std::iter::from_fn(|| loop {
        let (n, line) = match lines.next_line() {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => {
                changed = Some(e);
                return Some(Err(carnet_core::Error::InvalidArgument(
                    "the import file could not be read".into(),
                )));
            }
        };
        if skipped < skip {
            skipped += 1;
            continue;
        }
        return Some(line.and_then(|b| parse(&b)).map_err(|why| {
            carnet_core::Error::InvalidArgument(format!(
                "line {n} changed during the import: {why}"
            ))
        }));
    });
    // What this machine remembers moves with the import, at most once a second (a kill or
    // Ctrl-C would skip the end of the command).
    let mut remembered = Instant::now();
    let result = import.add_all(items, &mut |c| {
        bar.set(skip + c.notes_imported, total);
        if remembered.elapsed() >= std::time::Duration::from_secs(1) {
            vault.remember_now();
            remembered = Instant::now();
        }
    });
    if let Some(e) = changed {
        return Err(e);
    }
    result.map_err(|e| {
        let committed = import.committed().notes_imported;
        let e = CliError::from(e);
        CliError {
            message: format!("{} ({committed} notes were imported before it)", e.message),
            hint: e
                .hint
                .or_else(|| Some("run the same import again: it resumes where it stopped".into())),
            ..e
        }
    })?;
    let summary = import.finish()?;
    bar.finish();
    if g.json {
        render::print_json(&serde_json::json!({
            "patients_created": summary.patients_created,
            "notes_imported": summary.notes_imported,
        }))
    } else {
        render::print(&format!(
            "Imported {} notes ({} new patients) in {:.1} s.\n",
            summary.notes_imported,
            summary.patients_created,
            started.elapsed().as_secs_f64()
        ))
    }
}
