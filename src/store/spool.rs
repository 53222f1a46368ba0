//! The call-record spool (README.md, "What survives what"): an append-only log on local disk
//! that every call record is written to, and fsync'd, before the writer applies it to the
//! database (`store::writer`). A record stays in the spool until the database has it; at start
//! the records not yet applied are read back and applied first.
//!
//! Layout of the directory:
//! - `segment-<generation>.log`: records, one a line: 16 hex digits of a checksum (the first 8
//!   bytes of the SHA-256 of the payload), a space, the payload (one line of JSON), `\n`. Appends
//!   go to the newest segment; a segment past [`SEGMENT_BYTES`] is closed and a new one begun.
//! - `applied`: progress, `<generation> <offset>`: every record before that offset of that
//!   segment (and every older segment) is in the database. It is written after each applied
//!   record without fsync: a lost or torn progress file only means records are applied again,
//!   and every write is idempotent (`store::calls`).
//!
//! Segments older than the progress are deleted. A crash can leave a torn last record (no
//! `\n`): it is cut off with a log line when the spool is opened. A complete line whose checksum
//! does not match is skipped with a log line. Both are counted as lost by the caller.
//!
//! Sans-IO core: [`encode`] and [`scan`]; [`Spool`] does the file IO (blocking: call it from
//! `spawn_blocking`).

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// A segment is closed once it holds this many bytes, or an eighth of the spool's bound if
/// less (so applied records are deleted in pieces while the database keeps up).
pub const SEGMENT_BYTES: u64 = 1 << 20;

const PROGRESS_FILE: &str = "applied";

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a record ends: its segment and the offset just after it (what [`Spool::mark_applied`]
/// takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Segment generation.
    pub generation: u64,
    /// Offset just after the record.
    pub end: u64,
}

fn checksum(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One record as stored: checksum, space, payload, newline. The payload must not contain a
/// newline (compact JSON never does).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 18);
    out.extend_from_slice(checksum(payload).as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out.push(b'\n');
    out
}

/// What [`scan`] found in a segment's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The intact records: payload and the offset just after it.
    pub records: Vec<(Vec<u8>, u64)>,
    /// Offsets of complete lines skipped because their checksum did not match.
    pub corrupt: Vec<u64>,
    /// Where the intact part ends: less than the input's length when the last record is torn
    /// (no newline).
    pub valid_len: u64,
}

impl Scan {
    /// Whether the last record was torn.
    pub fn torn(&self, len: u64) -> bool {
        self.valid_len < len
    }
}

/// Reads the records of `buf` (a segment's bytes from offset `start`).
pub fn scan(buf: &[u8], start: u64) -> Scan {
    let mut out = Scan {
        valid_len: start,
        ..Scan::default()
    };
    let mut at = 0usize;
    while at < buf.len() {
        let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &buf[at..at + nl];
        let end = start + (at + nl + 1) as u64;
        match line.split_at_checked(16) {
            Some((sum, rest))
                if rest.first() == Some(&b' ') && sum == checksum(&rest[1..]).as_bytes() =>
            {
                out.records.push((rest[1..].to_vec(), end));
            }
            _ => out.corrupt.push(start + at as u64),
        }
        out.valid_len = end;
        at += nl + 1;
    }
    out
}

/// Parses the progress file's text; anything unreadable means "nothing applied".
pub fn parse_progress(text: &str) -> Position {
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(generation)), Some(Ok(end)), None) => Position { generation, end },
        _ => Position {
            generation: 0,
            end: 0,
        },
    }
}

/// What [`Spool::open`] read back: the records not yet applied, in order.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Payloads and where each ends.
    pub records: Vec<(Vec<u8>, Position)>,
    /// Lines skipped for a bad checksum, and torn last records cut off.
    pub corrupt: usize,
}

/// The open spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Segments on disk, oldest first: generation and length.
    segments: Vec<(u64, u64)>,
    file: File,
    max_bytes: u64,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { what, path, source }
}

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("segment-{generation:020}.log"))
}

fn open_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("opening", path))
}

impl Spool {
    /// Opens (creating) the spool in `dir`, holding at most `max_bytes` on disk, and reads back
    /// the records not yet applied. A torn last record is cut off and a bad line skipped, each
    /// with a log line.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovered), SpoolError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let progress = fs::read_to_string(dir.join(PROGRESS_FILE))
            .map(|t| parse_progress(&t))
            .unwrap_or(Position {
                generation: 0,
                end: 0,
            });
        let mut generations: Vec<u64> = fs::read_dir(dir)
            .map_err(io("listing", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("segment-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        generations.sort_unstable();
        let mut recovered = Recovered::default();
        let mut segments = Vec::new();
        for generation in generations {
            let path = segment_path(dir, generation);
            if generation < progress.generation {
                fs::remove_file(&path).map_err(io("deleting", &path))?;
                continue;
            }
            let bytes = fs::read(&path).map_err(io("reading", &path))?;
            let len = bytes.len() as u64;
            let from = if generation == progress.generation {
                progress.end.min(len)
            } else {
                0
            };
            // `from` is a record boundary unless the progress file is stale or torn: then read
            // from the segment's start (applying again is harmless).
            let from = if from == 0 || bytes.get(from as usize - 1) == Some(&b'\n') {
                from
            } else {
                0
            };
            let found = scan(&bytes[from as usize..], from);
            for at in &found.corrupt {
                tracing::error!(segment = %path.display(), offset = at, "spool: a record with a bad checksum skipped");
            }
            recovered.corrupt += found.corrupt.len();
            if found.torn(len) {
                tracing::warn!(segment = %path.display(), offset = found.valid_len, "spool: torn last record (a crash while it was written) cut off");
                recovered.corrupt += 1;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("opening", &path))?;
                f.set_len(found.valid_len)
                    .and_then(|()| f.sync_all())
                    .map_err(io("truncating", &path))?;
            }
            recovered.records.extend(
                found
                    .records
                    .into_iter()
                    .map(|(p, end)| (p, Position { generation, end })),
            );
            segments.push((generation, found.valid_len));
        }
        let created = segments.is_empty();
        if created {
            // After the progress's generation, so no stale offset applies to it.
            segments.push((progress.generation + 1, 0));
        }
        let (generation, _) = segments[segments.len() - 1];
        let file = open_append(&segment_path(dir, generation))?;
        if created {
            sync_dir(dir)?;
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segments,
                file,
                max_bytes,
            },
            recovered,
        ))
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|(_, len)| len).sum()
    }

    /// Appends the records (each already [`encode`]d) in one write and one fsync; returns where
    /// each ended, or `None` for one refused because the spool would exceed its size.
    pub fn append(&mut self, records: &[Vec<u8>]) -> Result<Vec<Option<Position>>, SpoolError> {
        let current = self.segments.len() - 1;
        // At most an eighth of the bound per segment, so applied records free their room soon.
        let segment_limit = SEGMENT_BYTES.min(self.max_bytes / 8).max(1);
        if self.segments[current].1 >= segment_limit {
            let generation = self.segments[current].0 + 1;
            let path = segment_path(&self.dir, generation);
            self.file = open_append(&path)?;
            sync_dir(&self.dir)?;
            self.segments.push((generation, 0));
        }
        let mut size = self.size();
        let last = self.segments.len() - 1;
        let (generation, mut len) = self.segments[last];
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let n = r.len() as u64;
            if size + n > self.max_bytes {
                out.push(None);
                continue;
            }
            size += n;
            len += n;
            buf.extend_from_slice(r);
            out.push(Some(Position {
                generation,
                end: len,
            }));
        }
        if !buf.is_empty() {
            let path = segment_path(&self.dir, generation);
            let written = self
                .file
                .write_all(&buf)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = written {
                // Cut a partial write off, so the next record starts on a line of its own.
                let _ = self.file.set_len(self.segments[last].1);
                return Err(io("writing", &path)(e));
            }
            self.segments[last].1 = len;
        }
        Ok(out)
    }

    /// Records that everything up to `pos` is in the database, and deletes the segments before
    /// it.
    pub fn mark_applied(&mut self, pos: Position) -> Result<(), SpoolError> {
        let path = self.dir.join(PROGRESS_FILE);
        fs::write(&path, format!("{} {}\n", pos.generation, pos.end))
            .map_err(io("writing", &path))?;
        while self.segments.len() > 1 && self.segments[0].0 < pos.generation {
            let path = segment_path(&self.dir, self.segments[0].0);
            fs::remove_file(&path).map_err(io("deleting", &path))?;
            self.segments.remove(0);
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(recovered: &Recovered) -> Vec<String> {
        recovered
            .records
            .iter()
            .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn a_record_round_trips_and_a_bad_line_is_skipped() {
        let mut buf = encode(br#"{"a":1}"#);
        let mut bad = encode(br#"{"a":2}"#);
        bad[20] = b'9';
        buf.extend_from_slice(&bad);
        buf.extend_from_slice(&encode(br#"{"a":3}"#));
        let s = scan(&buf, 0);
        let got: Vec<&[u8]> = s.records.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(got, [br#"{"a":1}"#.as_slice(), br#"{"a":3}"#.as_slice()]);
        assert_eq!(s.corrupt, [25]);
        assert_eq!(s.valid_len, buf.len() as u64);
        assert!(!s.torn(buf.len() as u64));
        assert_eq!(s.records[0].1, 25);
    }

    #[test]
    fn a_torn_last_record_is_not_read() {
        let mut buf = encode(b"first");
        let whole = buf.len() as u64;
        buf.extend_from_slice(&encode(b"second")[..10]);
        let s = scan(&buf, 0);
        assert_eq!(s.records, [(b"first".to_vec(), whole)]);
        assert_eq!(s.valid_len, whole);
        assert!(s.torn(buf.len() as u64));
    }

    #[test]
    fn garbage_progress_means_nothing_applied() {
        let zero = Position {
            generation: 0,
            end: 0,
        };
        assert_eq!(
            parse_progress("3 120\n"),
            Position {
                generation: 3,
                end: 120
            }
        );
        assert_eq!(
            parse_progress("3 1"),
            Position {
                generation: 3,
                end: 1
            }
        );
        assert_eq!(parse_progress("3"), zero);
        assert_eq!(parse_progress("x 5"), zero);
        assert_eq!(parse_progress("1 2 3"), zero);
        assert_eq!(parse_progress(""), zero);
    }

    #[test]
    fn records_not_marked_applied_are_read_back_and_applied_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(recovered.records.is_empty());
        let pos = spool
            .append(&[encode(b"one"), encode(b"two"), encode(b"three")])
            .unwrap();
        spool.mark_applied(pos[0].unwrap()).unwrap();
        drop(spool);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&recovered), ["two", "three"]);
        assert_eq!(recovered.corrupt, 0);
        // New records go after the recovered ones.
        spool.append(&[encode(b"four")]).unwrap();
        spool.mark_applied(recovered.records[1].1).unwrap();
        drop(spool);
        let (_, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&recovered), ["four"]);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_later_records_follow_the_intact_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&[encode(b"one"), encode(b"two")]).unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(b"three")[..7]).unwrap();
        drop(f);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&recovered), ["one", "two"]);
        assert_eq!(recovered.corrupt, 1, "the torn record counted");
        spool.append(&[encode(b"four")]).unwrap();
        drop(spool);
        let (_, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&recovered), ["one", "two", "four"]);
        assert_eq!(recovered.corrupt, 0, "cut off for good");
    }

    #[test]
    fn records_beyond_the_size_bound_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 50).unwrap();
        let r = encode(b"0123456789"); // 28 bytes
        let pos = spool.append(&[r.clone(), r.clone()]).unwrap();
        assert!(pos[0].is_some());
        assert_eq!(pos[1], None, "56 bytes > 50");
        assert_eq!(spool.size(), 28);
        // Applied records take room until their segment is deleted (a later segment's record
        // is applied).
        spool.mark_applied(pos[0].unwrap()).unwrap();
        assert_eq!(spool.append(std::slice::from_ref(&r)).unwrap(), [None]);
        let (_, rest) = Spool::open(dir.path(), 50).unwrap();
        assert!(rest.records.is_empty());
    }

    #[test]
    fn full_segments_are_closed_and_deleted_once_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let big = encode(&vec![b'x'; SEGMENT_BYTES as usize]);
        let first = spool.append(&[big]).unwrap()[0].unwrap();
        let second = spool.append(&[encode(b"small")]).unwrap()[0].unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(second.generation, 2, "a new segment once the first is full");
        spool.mark_applied(first).unwrap();
        assert!(segment_path(dir.path(), 1).exists());
        spool.mark_applied(second).unwrap();
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "fully applied: deleted"
        );
        assert_eq!(spool.size(), second.end);
        drop(spool);
        let (_, recovered) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert!(recovered.records.is_empty());
    }

    #[test]
    fn a_stale_progress_offset_inside_a_record_replays_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&[encode(b"one"), encode(b"two")]).unwrap();
        drop(spool);
        fs::write(dir.path().join(PROGRESS_FILE), "1 5\n").unwrap();
        let (_, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&recovered), ["one", "two"]);
    }
}
