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
    let mut done = 0u64;
    while let Some((n, line)) = lines.next_line()? {
        if done < skip {
            done += 1;
            continue;
        }
        let (patient, note) = line.and_then(|b| parse(&b)).map_err(|why| {
            CliError::failure(format!("line {n} changed during the import: {why}"))
        })?;
        import.add(patient, note).map_err(|e| {
            let committed = import.committed().notes_imported;
            let e = CliError::from(e);
            CliError {
                message: format!(
                    "line {n}: {} ({committed} notes were imported before it)",
                    e.message
                ),
                ..e
            }
        })?;
        done += 1;
        bar.set(done, total);
    }
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
