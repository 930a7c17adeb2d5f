//! The journal: what each replica that fell behind has missed, kept on the replicas that
//! hold the latest data, in `.mirrorfs/journal`.
//!
//! It is GlusterFS's "pending" idea kept as a log instead of per-file xattrs: one daemon
//! sees every change, so the replicas that took a change record, as one JSON line, what
//! another replica missed (a path's contents, whole or by 1 MiB chunks, or a directory's
//! listing). A replica is *tracked* from the moment it falls behind (a `track` record with
//! the generation its data has); from then on every mark, every repaired mark (`clear`)
//! and every rename (which moves marked paths) is appended. Reading the log back folds it
//! into the set of paths each tracked replica still misses: after a restart, repair works
//! from that set and touches nothing else. The log is rewritten as a compact snapshot when
//! it grows, when the mirror is mounted, and when a replica catches up (which then gets
//! its own copy).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::membership::state::{open_meta, read_meta, write_atomically};
use crate::sys;
use crate::tree::chunks::Chunks;

/// The journal file inside the metadata directory.
pub const JOURNAL_FILE: &str = "journal";

/// A path relative to the replica root (empty for the root). Stored as a JSON string, or
/// as `{"bytes": [...]}` when it is not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecPath(pub PathBuf);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PathRepr {
    Text(String),
    Bytes { bytes: Vec<u8> },
}

impl Serialize for RecPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(t) => PathRepr::Text(t.to_string()),
            None => PathRepr::Bytes {
                bytes: self.0.as_os_str().as_bytes().to_vec(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RecPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RecPath, D::Error> {
        Ok(RecPath(match PathRepr::deserialize(d)? {
            PathRepr::Text(t) => PathBuf::from(t),
            PathRepr::Bytes { bytes } => PathBuf::from(OsStr::from_bytes(&bytes)),
        }))
    }
}

/// What a mark covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum What {
    /// The object's contents and attributes, whole.
    Data,
    /// These chunk ranges of a regular file, and its size and attributes.
    Chunks(Vec<(u64, u64)>),
    /// A directory's listing.
    Entries,
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Record {
    /// From here on, what `replica` misses is recorded; its data is at generation `since`.
    Track { replica: String, since: String },
    /// `replica` is no longer tracked: it is in sync, or to be compared in full.
    Untrack { replica: String },
    /// `replica` misses `what` of `path`.
    Mark {
        replica: String,
        path: RecPath,
        what: What,
    },
    /// `replica` has the contents (or, with `entries`, the listing) of `path` again.
    Clear {
        replica: String,
        path: RecPath,
        entries: bool,
    },
    /// `from` was renamed to `to` (or, with `exchange`, the two swapped): marks move along.
    Rename {
        from: RecPath,
        to: RecPath,
        exchange: bool,
    },
    /// A change to `what` of `path`, begun in `epoch`, may be in flight: until that epoch
    /// is settled, any replica may differ from the others there. Written (and flushed to
    /// disk) before the change reaches any replica.
    Intent {
        epoch: u64,
        path: RecPath,
        what: What,
        /// For a listing: its regular files made at or after this time (seconds since
        /// 1970, the daemon's clock) may differ in contents too, with no record of their
        /// own (see `Intents::born`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_since: Option<u64>,
    },
    /// Every change begun in `epoch` or earlier reached every replica it was meant for and
    /// is on disk there: those intents are void.
    Settled { epoch: u64 },
}

/// What a replica misses of one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathMarks {
    /// Its contents: `Some(None)` whole, `Some(Some(chunks))` those chunks.
    pub data: Option<Option<Chunks>>,
    /// Its listing, for a directory.
    pub entries: bool,
    /// With `entries`: the regular files in it made at or after this time (seconds since
    /// 1970, the daemon's clock) may differ in contents too.
    pub new_since: Option<u64>,
}

impl PathMarks {
    fn is_empty(&self) -> bool {
        self.data.is_none() && !self.entries
    }

    pub fn merge(&mut self, other: PathMarks) {
        self.entries |= other.entries;
        self.new_since = match (self.new_since, other.new_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.data = match (self.data.take(), other.data) {
            (None, d) | (d, None) => d,
            (Some(None), _) | (_, Some(None)) => Some(None),
            (Some(Some(mut a)), Some(Some(b))) => {
                for &(x, y) in b.ranges() {
                    a.add(x, y);
                }
                Some(Some(a))
            }
        };
    }
}

/// A replica tracked by the journal: since which generation, and what it misses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    pub since: String,
    pub marks: BTreeMap<PathBuf, PathMarks>,
}

/// The journal folded: per tracked replica id, what it misses; and the changes that may
/// have been in flight when it ends (after a crash, every replica may differ there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub tracked: HashMap<String, Tracked>,
    /// Per path: the latest epoch an unsettled intent for it was made in, and what it
    /// covers.
    pub intents: BTreeMap<PathBuf, (u64, PathMarks)>,
}

impl Pending {
    /// Records that a change to `marks` of `path` began in `epoch`.
    fn add_intent(&mut self, path: PathBuf, epoch: u64, marks: PathMarks) {
        let (e, have) = self.intents.entry(path).or_default();
        *e = (*e).max(epoch);
        have.merge(marks);
    }

    /// What the unsettled intents cover, by path.
    pub fn in_flight(&self) -> BTreeMap<PathBuf, PathMarks> {
        self.intents
            .iter()
            .map(|(p, (_, m))| (p.clone(), m.clone()))
            .collect()
    }
}

fn path_marks(what: What) -> PathMarks {
    match what {
        What::Data => PathMarks {
            data: Some(None),
            ..PathMarks::default()
        },
        What::Chunks(ranges) => {
            let mut c = Chunks::default();
            for (a, b) in ranges {
                c.add(a, b);
            }
            PathMarks {
                data: Some(Some(c)),
                ..PathMarks::default()
            }
        }
        What::Entries => PathMarks {
            entries: true,
            ..PathMarks::default()
        },
    }
}

impl Pending {
    /// Applies one record.
    pub fn apply(&mut self, rec: Record) {
        match rec {
            Record::Track { replica, since } => {
                self.tracked.insert(
                    replica,
                    Tracked {
                        since,
                        marks: BTreeMap::new(),
                    },
                );
            }
            Record::Untrack { replica } => {
                self.tracked.remove(&replica);
            }
            Record::Mark {
                replica,
                path,
                what,
            } => {
                let Some(t) = self.tracked.get_mut(&replica) else {
                    return;
                };
                t.marks.entry(path.0).or_default().merge(path_marks(what));
            }
            Record::Intent {
                epoch,
                path,
                what,
                new_since,
            } => {
                let mut marks = path_marks(what);
                marks.new_since = new_since.filter(|_| marks.entries);
                self.add_intent(path.0, epoch, marks);
            }
            Record::Settled { epoch } => self.intents.retain(|_, (e, _)| *e > epoch),
            Record::Clear {
                replica,
                path,
                entries,
            } => {
                let Some(t) = self.tracked.get_mut(&replica) else {
                    return;
                };
                if let Some(m) = t.marks.get_mut(&path.0) {
                    if entries {
                        m.entries = false;
                    } else {
                        m.data = None;
                    }
                    if m.is_empty() {
                        t.marks.remove(&path.0);
                    }
                }
            }
            Record::Rename { from, to, exchange } => {
                for t in self.tracked.values_mut() {
                    let forth = take_under(&mut t.marks, &from.0);
                    let back = if exchange {
                        take_under(&mut t.marks, &to.0)
                    } else {
                        Vec::new()
                    };
                    for (rest, m) in forth {
                        t.marks.entry(to.0.join(rest)).or_default().merge(m);
                    }
                    for (rest, m) in back {
                        t.marks.entry(from.0.join(rest)).or_default().merge(m);
                    }
                }
                let forth = take_under(&mut self.intents, &from.0);
                let back = if exchange {
                    take_under(&mut self.intents, &to.0)
                } else {
                    Vec::new()
                };
                for (rest, (epoch, m)) in forth {
                    self.add_intent(to.0.join(rest), epoch, m);
                }
                for (rest, (epoch, m)) in back {
                    self.add_intent(from.0.join(rest), epoch, m);
                }
            }
        }
    }

    /// Reads a journal's text.
    /// Folds the journal's text. A last line cut short (a crash in the middle of an
    /// append that was never acknowledged) is left out.
    pub fn parse(text: &str) -> Result<Pending, String> {
        let mut p = Pending::default();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let rec: Record = match serde_json::from_str(line) {
                Ok(rec) => rec,
                Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => return Err(format!("line {}: {e}", n + 1)),
            };
            p.apply(rec);
        }
        Ok(p)
    }
}

/// Removes the marks at `dir` and below it, returning them keyed by their path below it.
fn take_under<V>(marks: &mut BTreeMap<PathBuf, V>, dir: &Path) -> Vec<(PathBuf, V)> {
    let keys: Vec<PathBuf> = marks
        .keys()
        .filter(|k| k.starts_with(dir))
        .cloned()
        .collect();
    keys.into_iter()
        .map(|k| {
            let m = marks.remove(&k).expect("listed above");
            (k.strip_prefix(dir).expect("under dir").to_path_buf(), m)
        })
        .collect()
}

/// The records as journal text, one JSON object per line.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).expect("records serialise");
        out.push(b'\n');
    }
    out
}

/// Reads the journal under a replica root: `None` if it has none.
pub fn load(root: BorrowedFd<'_>) -> io::Result<Option<Pending>> {
    let Some(text) = read_meta(root, JOURNAL_FILE)? else {
        return Ok(None);
    };
    Pending::parse(&text)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{JOURNAL_FILE}: {e}")))
}

/// Replaces the journal under a replica root with `records`, durably.
pub fn rewrite(root: BorrowedFd<'_>, records: &[Record]) -> io::Result<()> {
    let meta = open_meta(root)?;
    write_atomically(meta.as_fd(), JOURNAL_FILE, &encode(records))
}

/// Opens the journal under a replica root for appending. It is opened for each batch of
/// records and closed after, so that no file stays open for writing on the replica's
/// filesystem (which would keep it from being remounted read-only).
fn open_for_append(root: BorrowedFd<'_>) -> io::Result<std::fs::File> {
    let meta = open_meta(root)?;
    let fd = sys::openat(
        meta.as_fd(),
        OsStr::new(JOURNAL_FILE),
        libc::O_WRONLY | libc::O_APPEND,
        0,
    )?;
    Ok(std::fs::File::from(fd))
}

/// Appends encoded records to the journal under a replica root; returns the journal, open,
/// for a flush.
pub fn append(root: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<std::fs::File> {
    let mut f = open_for_append(root)?;
    f.write_all(bytes)?;
    Ok(f)
}

/// Flushes the journal under a replica root to disk.
pub fn sync(root: BorrowedFd<'_>) -> io::Result<()> {
    open_for_append(root)?.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RecPath {
        RecPath(PathBuf::from(s))
    }

    fn mark(path: &str, what: What) -> Record {
        Record::Mark {
            replica: "b".into(),
            path: p(path),
            what,
        }
    }

    fn fold(records: &[Record]) -> Pending {
        let text = String::from_utf8(encode(records)).unwrap();
        Pending::parse(&text).unwrap()
    }

    fn track() -> Record {
        Record::Track {
            replica: "b".into(),
            since: "g1".into(),
        }
    }

    #[test]
    fn marks_of_a_tracked_replica_fold_into_paths() {
        let pending = fold(&[
            mark("ignored", What::Data),
            track(),
            mark("d/f", What::Chunks(vec![(3, 4)])),
            mark("d/f", What::Chunks(vec![(4, 6)])),
            mark("d", What::Entries),
            mark("g", What::Chunks(vec![(1, 2)])),
            mark("g", What::Data),
            mark("h", What::Data),
            Record::Clear {
                replica: "b".into(),
                path: p("h"),
                entries: false,
            },
        ]);
        let t = &pending.tracked["b"];
        assert_eq!(t.since, "g1");
        assert_eq!(t.marks.len(), 3);
        let f = t.marks[Path::new("d/f")].data.clone().unwrap().unwrap();
        assert_eq!(f.ranges(), &[(3, 6)]);
        assert!(t.marks[Path::new("d")].entries);
        assert_eq!(t.marks[Path::new("g")].data, Some(None));
        assert!(!t.marks.contains_key(Path::new("ignored")));
    }

    #[test]
    fn renames_move_marks_and_untrack_forgets() {
        let pending = fold(&[
            track(),
            mark("a/x", What::Data),
            mark("a/y/z", What::Entries),
            mark("ab", What::Data),
            mark("c", What::Chunks(vec![(0, 1)])),
            Record::Rename {
                from: p("a"),
                to: p("n/a2"),
                exchange: false,
            },
            Record::Rename {
                from: p("ab"),
                to: p("c"),
                exchange: true,
            },
        ]);
        let keys: Vec<_> = pending.tracked["b"].marks.keys().cloned().collect();
        let want: Vec<PathBuf> = ["ab", "c", "n/a2/x", "n/a2/y/z"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(keys, want);
        assert_eq!(
            pending.tracked["b"].marks[Path::new("ab")].data,
            Some(Some({
                let mut c = Chunks::default();
                c.add(0, 1);
                c
            }))
        );
        let gone = fold(&[
            track(),
            mark("a", What::Data),
            Record::Untrack {
                replica: "b".into(),
            },
        ]);
        assert!(gone.tracked.is_empty());
    }

    #[test]
    fn a_last_line_cut_short_is_left_out() {
        let mut text = String::from_utf8(encode(&[track(), mark("a", What::Data)])).unwrap();
        text.push_str("{\"op\":\"mark\",\"repl");
        let p = Pending::parse(&text).unwrap();
        assert_eq!(p.tracked["b"].marks.len(), 1);
        text.push('\n');
        assert!(
            Pending::parse(&text).is_err(),
            "a whole line that is garbage is an error"
        );
    }

    fn intent(epoch: u64, path: &str, what: What) -> Record {
        Record::Intent {
            epoch,
            path: p(path),
            what,
            new_since: None,
        }
    }

    #[test]
    fn intents_fold_by_path_move_with_renames_and_settle_by_epoch() {
        let pending = fold(&[
            intent(1, "a/f", What::Chunks(vec![(0, 2)])),
            intent(1, "a", What::Entries),
            intent(2, "a/f", What::Chunks(vec![(5, 6)])),
            intent(2, "g", What::Data),
            Record::Rename {
                from: p("a"),
                to: p("b"),
                exchange: false,
            },
            Record::Settled { epoch: 1 },
        ]);
        let left = pending.in_flight();
        // `b` (was `a`) was last intended in epoch 1: settled. `b/f` was intended again.
        assert_eq!(left.len(), 2, "{left:?}");
        let f = left[Path::new("b/f")].data.clone().unwrap().unwrap();
        assert_eq!(f.ranges(), &[(0, 2), (5, 6)]);
        assert_eq!(left[Path::new("g")].data, Some(None));
        let all = fold(&[intent(3, "x", What::Data), Record::Settled { epoch: 3 }]);
        assert!(all.in_flight().is_empty());
    }

    #[test]
    fn a_listing_keeps_the_earliest_time_its_new_files_may_differ_from() {
        let listing = |epoch, new_since| Record::Intent {
            epoch,
            path: p("d"),
            what: What::Entries,
            new_since: Some(new_since),
        };
        let line = String::from_utf8(encode(&[listing(1, 500)])).unwrap();
        assert!(line.contains(r#""new_since":500"#), "{line}");
        let older = String::from_utf8(encode(&[intent(1, "d", What::Entries)])).unwrap();
        assert!(!older.contains("new_since"), "{older}");
        let pending = fold(&[
            listing(1, 500),
            listing(2, 498),
            listing(2, 503),
            intent(2, "d/f", What::Data),
            Record::Rename {
                from: p("d"),
                to: p("e"),
                exchange: false,
            },
        ]);
        let left = pending.in_flight();
        assert_eq!(left[Path::new("e")].new_since, Some(498));
        assert_eq!(left[Path::new("e/f")].new_since, None);
    }

    #[test]
    fn paths_that_are_not_utf8_round_trip() {
        let raw = PathBuf::from(OsStr::from_bytes(b"d/\xff\xfe"));
        let rec = Record::Mark {
            replica: "b".into(),
            path: RecPath(raw.clone()),
            what: What::Entries,
        };
        let pending = fold(&[track(), rec]);
        assert!(pending.tracked["b"].marks.contains_key(&raw));
        assert!(Pending::parse("{not json\n").is_err());
    }
}
