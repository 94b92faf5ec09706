//! The replicated catalog: sources and plugin manifests as last-writer-wins entries.
//!
//! Every entry carries a Lamport clock and the id of the node that wrote it; the greater
//! `(clock, node)` wins everywhere, so every node that has seen the same entries holds the
//! same catalog whatever the order they arrived in. A delete is a tombstone (an entry without
//! a value), so it wins over the value it deletes when the two meet. The catalog is kept in
//! `<data_dir>/catalog.json` and its journal `catalog.log` (see `journal.rs`) so that a
//! restarted node remembers it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::journal::{Flush, Journal, Snapshot};

/// One catalog entry; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub clock: u64,
    pub node: String,
    pub value: Option<Value>,
}

/// Which version of a key a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub key: String,
    pub clock: u64,
    pub node: String,
}

impl Entry {
    fn beats(&self, clock: u64, node: &str) -> bool {
        (self.clock, self.node.as_str()) > (clock, node)
    }

    pub fn version(&self) -> Version {
        Version {
            key: self.key.clone(),
            clock: self.clock,
            node: self.node.clone(),
        }
    }
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    clock: u64,
    /// Keys changed since the last flush.
    unsaved: BTreeSet<String>,
    /// Keys changed since the last `take_changes`; `None` when more changed than it keeps.
    changed: Option<BTreeSet<String>>,
}

/// Changed keys are remembered for `take_changes` up to this many; past it, every key counts
/// as changed.
const CHANGES_KEPT: usize = 100_000;

/// What changed since the last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    Keys(BTreeSet<String>),
    /// Too much to list: look at everything.
    All,
}

/// The catalog of one node. Share it behind an `Arc`.
pub struct Catalog {
    node: String,
    journal: Option<Mutex<Journal>>,
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    /// Peers' entries refused by the checks.
    refused: std::sync::atomic::AtomicU64,
}

impl Catalog {
    /// The catalog kept at `path` and its journal (read when present), written by `node`.
    pub fn open(node: &str, path: Option<PathBuf>) -> std::io::Result<Catalog> {
        let mut journal = path.map(Journal::new);
        let (snapshot, changes) = match &mut journal {
            Some(journal) => journal.read()?,
            None => (Snapshot::default(), Vec::new()),
        };
        let mut clock = snapshot.clock;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for entry in snapshot.entries.into_iter().chain(changes) {
            clock = clock.max(entry.clock);
            let newer = entries
                .get(&entry.key)
                .is_none_or(|have| entry.beats(have.clock, &have.node));
            if newer {
                entries.insert(entry.key.clone(), entry);
            }
        }
        Ok(Catalog {
            node: node.to_owned(),
            journal: journal.map(Mutex::new),
            inner: Mutex::new(Inner {
                entries,
                clock,
                unsaved: BTreeSet::new(),
                changed: Some(BTreeSet::new()),
            }),
            changes: watch::channel(0).0,
            refused: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Write `value` (or a tombstone) under `key` as this node; returns the entry to spread.
    pub fn put(&self, key: &str, value: Option<Value>) -> Entry {
        let entry = {
            let mut inner = self.lock();
            inner.clock = inner.clock.saturating_add(1);
            let entry = Entry {
                key: key.to_owned(),
                clock: inner.clock,
                node: self.node.clone(),
                value,
            };
            inner.entries.insert(key.to_owned(), entry.clone());
            inner.touch(key);
            entry
        };
        self.changed();
        entry
    }

    /// Take a peer's entry if it passes the checks (see `checks.rs`) and is newer than ours;
    /// returns whether it was taken. A refused entry is counted and logged.
    pub fn merge(&self, entry: Entry) -> bool {
        let applied = {
            let mut inner = self.lock();
            if let Some(why) = super::checks::refusal(
                &entry.key,
                entry.clock,
                &entry.node,
                entry.value.as_ref(),
                inner.clock,
            ) {
                drop(inner);
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(from = %entry.node, "catalog entry refused: {why}");
                return false;
            }
            inner.clock = inner.clock.max(entry.clock);
            let newer = inner
                .entries
                .get(&entry.key)
                .is_none_or(|have| entry.beats(have.clock, &have.node));
            if newer {
                inner.touch(&entry.key);
                inner.entries.insert(entry.key.clone(), entry);
            }
            newer
        };
        if applied {
            self.changed();
        }
        applied
    }

    /// Merge many; returns how many were newer.
    pub fn merge_all(&self, entries: impl IntoIterator<Item = Entry>) -> usize {
        entries
            .into_iter()
            .filter(|e| self.merge(e.clone()))
            .count()
    }

    /// How many peers' entries the checks refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The entry under `key`, tombstone or not.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.lock().entries.get(key).cloned()
    }

    /// Live (non-tombstone) values whose key starts with `prefix`, by key.
    pub fn live(&self, prefix: &str) -> Vec<Entry> {
        self.lock()
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.value.is_some())
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every key's version, for anti-entropy.
    pub fn versions(&self) -> Vec<Version> {
        self.lock().entries.values().map(Entry::version).collect()
    }

    /// Compared with a peer's versions: our entries it lacks or holds older, and the keys
    /// where it is ahead of us.
    pub fn diff(&self, theirs: &[Version]) -> (Vec<Entry>, Vec<String>) {
        let inner = self.lock();
        let mut seen = std::collections::HashSet::with_capacity(theirs.len());
        let mut want = Vec::new();
        let mut give = Vec::new();
        for v in theirs {
            seen.insert(v.key.as_str());
            match inner.entries.get(&v.key) {
                None => want.push(v.key.clone()),
                Some(mine) if mine.beats(v.clock, &v.node) => give.push(mine.clone()),
                Some(mine) if (mine.clock, mine.node.as_str()) == (v.clock, v.node.as_str()) => {}
                Some(_) => want.push(v.key.clone()),
            }
        }
        give.extend(
            inner
                .entries
                .values()
                .filter(|e| !seen.contains(e.key.as_str()))
                .cloned(),
        );
        (give, want)
    }

    /// The entries under `keys` that we hold.
    pub fn entries(&self, keys: &[String]) -> Vec<Entry> {
        let inner = self.lock();
        keys.iter()
            .filter_map(|k| inner.entries.get(k).cloned())
            .collect()
    }

    /// A hash of every version held: equal on two nodes when their catalogs are equal.
    pub fn fingerprint(&self) -> u64 {
        let inner = self.lock();
        let mut hash = super::assign::Fnv::new();
        for e in inner.entries.values() {
            hash.write(e.key.as_bytes());
            hash.write(&e.clock.to_le_bytes());
            hash.write(e.node.as_bytes());
            hash.write(&[0xff]);
        }
        hash.finish()
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ticks on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The keys changed since the last call (for a reconcile that looks only at those).
    pub fn take_changes(&self) -> Changes {
        let mut inner = self.lock();
        match inner.changed.replace(BTreeSet::new()) {
            Some(keys) => Changes::Keys(keys),
            None => Changes::All,
        }
    }

    /// Write what changed since the last flush: appended to the journal, or folded with the
    /// rest into a new snapshot when the journal has grown past the catalog's size.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut journal = journal.lock().unwrap_or_else(|p| p.into_inner());
        let (keys, write) = {
            let mut inner = self.lock();
            if inner.unsaved.is_empty() {
                return Ok(());
            }
            let keys = std::mem::take(&mut inner.unsaved);
            let write = if journal.should_fold(keys.len(), inner.entries.len()) {
                Flush::Fold(Snapshot {
                    clock: inner.clock,
                    entries: inner.entries.values().cloned().collect(),
                })
            } else {
                Flush::Append(keys.iter().map(|k| inner.entries[k].clone()).collect())
            };
            (keys, write)
        };
        let result = journal.write(write);
        if result.is_err() {
            self.lock().unsaved.extend(keys);
        }
        result
    }
}

impl Inner {
    fn touch(&mut self, key: &str) {
        self.unsaved.insert(key.to_owned());
        if let Some(changed) = &mut self.changed {
            if changed.len() >= CHANGES_KEPT {
                self.changed = None;
            } else {
                changed.insert(key.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value peers' entries may carry (a shared cursor).
    fn v(n: impl std::fmt::Display) -> Value {
        json!({"cursor": n.to_string(), "at_us": 0})
    }

    #[test]
    fn a_refused_entry_changes_nothing_and_is_counted() {
        let a = Catalog::open("a", None).unwrap();
        let good = a.put("cursor/x", Some(v(1)));
        let b = Catalog::open("b", None).unwrap();
        assert!(b.merge(good.clone()));
        let pinned = Entry {
            clock: u64::MAX,
            ..good.clone()
        };
        assert!(!b.merge(pinned), "a clock far ahead is refused");
        let bad = Entry {
            clock: good.clock + 1,
            value: Some(json!({"anything": true})),
            ..good
        };
        assert!(!b.merge(bad), "a value of the wrong shape is refused");
        assert_eq!(b.refused(), 2);
        assert_eq!(b.get("cursor/x").unwrap().value, Some(v(1)));
        assert!(
            b.put("cursor/y", None).clock < 1000,
            "the clock did not jump"
        );
    }

    #[test]
    fn the_later_writer_wins_in_any_order_and_tombstones_delete() {
        let a = Catalog::open("a", None).unwrap();
        let b = Catalog::open("b", None).unwrap();
        let first = a.put("cursor/x", Some(v(1)));
        b.merge(first.clone());
        let second = b.put("cursor/x", Some(v(2)));
        assert!(second.clock > first.clock);
        // Arrivals in either order end the same.
        let c = Catalog::open("c", None).unwrap();
        c.merge(second.clone());
        assert!(!c.merge(first.clone()), "an older entry must not win");
        assert!(a.merge(second.clone()));
        assert_eq!(a.fingerprint(), c.fingerprint());
        let gone = a.put("cursor/x", None);
        c.merge(gone);
        assert!(c.live("cursor/").is_empty());
        assert_eq!(c.get("cursor/x").unwrap().value, None);
    }

    #[test]
    fn ties_on_the_clock_go_to_the_greater_node_id() {
        let a = Catalog::open("a", None).unwrap();
        let b = Catalog::open("b", None).unwrap();
        let from_a = a.put("cursor/k", Some(v("a")));
        let from_b = b.put("cursor/k", Some(v("b")));
        assert_eq!(from_a.clock, from_b.clock);
        a.merge(from_b.clone());
        b.merge(from_a);
        assert_eq!(a.get("cursor/k").unwrap().value, Some(v("b")));
        assert_eq!(b.get("cursor/k").unwrap().value, Some(v("b")));
    }

    #[test]
    fn diff_gives_what_the_peer_lacks_and_wants_what_it_has() {
        let a = Catalog::open("a", None).unwrap();
        let b = Catalog::open("b", None).unwrap();
        a.put("cursor/only-a", Some(v(1)));
        b.put("cursor/only-b", Some(v(2)));
        let shared = a.put("cursor/shared", Some(v(3)));
        b.merge(shared);
        let (give, want) = a.diff(&b.versions());
        assert_eq!(
            give.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["cursor/only-a"]
        );
        assert_eq!(want, ["cursor/only-b"]);
        b.merge_all(give);
        a.merge_all(b.entries(&want));
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn a_reopened_catalog_remembers_entries_and_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let a = Catalog::open("a", Some(path.clone())).unwrap();
        a.put("source/x", Some(json!({"plugin": "p"})));
        a.put("source/y", None);
        a.flush().unwrap();
        let again = Catalog::open("a", Some(path.clone())).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        assert!(again.put("z", None).clock > 2);
        std::fs::write(&path, b"not json").unwrap();
        let err = Catalog::open("a", Some(path)).err().unwrap();
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn a_change_appends_one_line_and_the_journal_folds_past_the_catalog_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let log = dir.path().join("catalog.log");
        let a = Catalog::open("a", Some(path.clone())).unwrap();
        for n in 0..3000 {
            a.put(&format!("source/s{n}"), Some(json!({"n": n})));
        }
        a.flush().unwrap();
        let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&log), 3000);
        assert!(
            !path.exists(),
            "no snapshot yet: 3,000 lines is under the folding bound"
        );
        // One more change costs one line, whatever the catalog's size.
        a.put("source/s7", None);
        a.flush().unwrap();
        assert_eq!(lines(&log), 3001);
        let again = Catalog::open("a", Some(path.clone())).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        assert_eq!(again.get("source/s7").unwrap().value, None);
        // Past the bound (twice the catalog's entries), the journal folds into a snapshot
        // and starts empty.
        for n in 0..2999 {
            a.put(&format!("source/s{n}"), Some(json!({"n": n + 1})));
        }
        a.flush().unwrap();
        assert_eq!(lines(&log), 6000, "6,000 lines for 3,000 entries: not yet");
        a.put("source/s2999", Some(json!({"n": 0})));
        a.flush().unwrap();
        assert!(path.exists() && !log.exists(), "folded");
        a.put("source/s0", None);
        a.flush().unwrap();
        assert_eq!(lines(&log), 1);
        let again = Catalog::open("a", Some(path)).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        assert_eq!(again.len(), 3000);
    }

    #[test]
    fn a_journal_line_cut_short_by_a_crash_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let a = Catalog::open("a", Some(path.clone())).unwrap();
        a.put("source/x", Some(json!({"n": 1})));
        a.put("source/y", Some(json!({"n": 2})));
        a.flush().unwrap();
        let log = dir.path().join("catalog.log");
        let mut text = std::fs::read(&log).unwrap();
        text.extend_from_slice(br#"{"key":"source/z","clo"#);
        std::fs::write(&log, &text).unwrap();
        let again = Catalog::open("a", Some(path.clone())).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        // A bad line that is not the last is not a crash: the node refuses to guess.
        text.extend_from_slice(b"\n{}\n");
        std::fs::write(&log, &text).unwrap();
        let err = Catalog::open("a", Some(path)).err().unwrap();
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn changes_name_the_keys_written_or_merged_since_the_last_look() {
        let a = Catalog::open("a", None).unwrap();
        let b = Catalog::open("b", None).unwrap();
        a.put("cursor/x", Some(v(1)));
        b.put("cursor/y", None);
        assert!(b.merge(a.get("cursor/x").unwrap()));
        assert_eq!(
            a.take_changes(),
            Changes::Keys(["cursor/x".to_owned()].into())
        );
        assert_eq!(a.take_changes(), Changes::Keys(BTreeSet::new()));
        assert_eq!(
            b.take_changes(),
            Changes::Keys(["cursor/x".to_owned(), "cursor/y".to_owned()].into())
        );
    }
}
