//! Where a node keeps its catalog: a snapshot (`catalog.json`) and a journal beside it
//! (`catalog.log`, one entry per line) that every change is appended to. Writing a change
//! costs as much as the change, not as much as the catalog; the journal is folded into a new
//! snapshot once it holds more than twice as many lines as the catalog has entries.
//!
//! A crash can leave a half-written last line: it is skipped when the journal is read (that
//! change is lost on this node only, and comes back from peers by anti-entropy). Reading a
//! journal over a newer snapshot (a crash between writing the snapshot and emptying the
//! journal) is harmless: entries are merged by their versions, so an older line loses.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::Entry;

/// Fold the journal into the snapshot once it has this many lines or more than twice as many
/// as the catalog has entries, whichever is greater: each change costs at most three lines'
/// worth of writing in all, and reading a journal at start at most twice the catalog.
const MIN_LINES_BEFORE_FOLDING: usize = 4096;
const LINES_PER_ENTRY_BEFORE_FOLDING: usize = 2;

#[derive(Default, Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub(super) clock: u64,
    pub(super) entries: Vec<Entry>,
}

/// The snapshot and journal files of one catalog.
#[derive(Debug)]
pub(super) struct Journal {
    snapshot: PathBuf,
    log: PathBuf,
    /// Lines in the journal file.
    lines: usize,
}

/// What to write at a flush.
pub(super) enum Flush {
    /// These entries changed: append them.
    Append(Vec<Entry>),
    /// Replace both files with this snapshot.
    Fold(Snapshot),
}

impl Journal {
    /// The journal of the snapshot at `snapshot` (`x.json` → `x.log`).
    pub(super) fn new(snapshot: PathBuf) -> Self {
        let log = snapshot.with_extension("log");
        Journal {
            snapshot,
            log,
            lines: 0,
        }
    }

    /// The snapshot's clock and entries, then the journal's entries in the order written.
    pub(super) fn read(&mut self) -> std::io::Result<(Snapshot, Vec<Entry>)> {
        let snapshot = if self.snapshot.exists() {
            let bytes = std::fs::read(&self.snapshot)?;
            serde_json::from_slice(&bytes).map_err(|e| not_a_catalog(&self.snapshot, &e))?
        } else {
            Snapshot::default()
        };
        let mut changes = Vec::new();
        if self.log.exists() {
            let text = std::fs::read(&self.log)?;
            let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
            let last = lines.len().saturating_sub(1);
            for (n, line) in lines.iter().enumerate() {
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Entry>(line) {
                    Ok(entry) => changes.push(entry),
                    // An unfinished last line: the write was cut short.
                    Err(_) if n == last => {
                        tracing::warn!(
                            "{}: the last line is cut short (a crash while writing); it is \
                             skipped, peers send that change again",
                            self.log.display()
                        );
                    }
                    Err(e) => return Err(not_a_catalog(&self.log, &e)),
                }
            }
            self.lines = changes.len();
        }
        Ok((snapshot, changes))
    }

    /// Whether the next flush should fold the journal into a new snapshot.
    pub(super) fn should_fold(&self, appending: usize, entries: usize) -> bool {
        self.lines + appending
            > MIN_LINES_BEFORE_FOLDING.max(LINES_PER_ENTRY_BEFORE_FOLDING * entries)
    }

    pub(super) fn write(&mut self, what: Flush) -> std::io::Result<()> {
        match what {
            Flush::Append(entries) => {
                let mut bytes = Vec::with_capacity(entries.len() * 256);
                for entry in &entries {
                    serde_json::to_writer(&mut bytes, entry).expect("entries serialise");
                    bytes.push(b'\n');
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)?;
                file.write_all(&bytes)?;
                file.sync_data()?;
                self.lines += entries.len();
            }
            Flush::Fold(snapshot) => {
                let bytes = serde_json::to_vec(&snapshot).expect("catalog serialises");
                let tmp = self.snapshot.with_extension("json.tmp");
                std::fs::write(&tmp, &bytes)?;
                std::fs::File::open(&tmp)?.sync_data()?;
                std::fs::rename(&tmp, &self.snapshot)?;
                match std::fs::remove_file(&self.log) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                self.lines = 0;
            }
        }
        Ok(())
    }
}

fn not_a_catalog(path: &Path, e: &serde_json::Error) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is not a catalog ({e}); move it away to start with an empty one (peers will \
             send theirs)",
            path.display()
        ),
    )
}
