//! The node's incarnation across restarts (`docs/wire.md` section 5).
//!
//! A small file holds a *floor*: a number above every incarnation, record
//! `seq` and row id any run of this node has used. At start the node takes
//! `incarnation = max(floor, clock in µs)` and, before it speaks, writes a
//! new floor `incarnation + RESERVE_US`; while it runs, the floor is moved
//! ahead whenever the node's high water ([`shoal_core::Node::high_water`])
//! comes within half the reserve. So a restarted node always starts above
//! its previous run, even when the clock stepped back: peers never take it
//! for a replay, and its row ids and relay sequences never repeat.
//!
//! The file is one decimal number and a newline, replaced atomically
//! (written to a temporary file, fsync'd, renamed over, directory
//! fsync'd). A missing file is a first start; an unreadable or corrupt one
//! stops the start with an error naming it, never a silent reset.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// How far the persisted floor is kept ahead of the values in use (10 s
/// of the clock): the file is written about every 5 s, and a restart
/// within 10 s of a stop starts at most this far ahead of the clock.
pub(crate) const RESERVE_US: u64 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum IncarnationError {
    #[error("incarnation file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("incarnation file {path} is corrupt ({content:?} is not a number): fix it, or remove it to trust the clock")]
    Corrupt { path: PathBuf, content: String },
}

/// The persisted floor of one node.
#[derive(Debug)]
pub(crate) struct IncarnationFile {
    path: PathBuf,
    floor: u64,
}

impl IncarnationFile {
    /// Reads the floor at `path` (none yet: 0), picks this run's
    /// incarnation from it and the clock (`wall_us`), and persists the new
    /// floor before returning.
    pub(crate) fn start(
        path: &Path,
        wall_us: u64,
    ) -> Result<(IncarnationFile, u64), IncarnationError> {
        let floor = read(path)?;
        let incarnation = floor.max(wall_us).max(1);
        let mut file = IncarnationFile {
            path: path.to_path_buf(),
            floor,
        };
        file.persist(incarnation.saturating_add(RESERVE_US))?;
        Ok((file, incarnation))
    }

    /// Whether the floor must move ahead of `high_water`.
    pub(crate) fn due(&self, high_water: u64) -> bool {
        high_water.saturating_add(RESERVE_US / 2) >= self.floor
    }

    /// Moves the floor ahead of `high_water` if it is due.
    pub(crate) fn keep_ahead(&mut self, high_water: u64) -> Result<(), IncarnationError> {
        if self.due(high_water) {
            self.persist(high_water.saturating_add(RESERVE_US))?;
        }
        Ok(())
    }

    fn persist(&mut self, floor: u64) -> Result<(), IncarnationError> {
        let io = |source| IncarnationError::Io {
            path: self.path.clone(),
            source,
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(format!("{floor}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename is durable once the directory is.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        self.floor = floor;
        Ok(())
    }
}

/// The floor persisted at `path`: 0 when there is no file yet.
pub(crate) fn read(path: &Path) -> Result<u64, IncarnationError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(IncarnationError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = || IncarnationError::Corrupt {
        path: path.to_path_buf(),
        content: String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned(),
    };
    let s = std::str::from_utf8(&text).map_err(|_| corrupt())?;
    let digits = s.strip_suffix('\n').ok_or_else(corrupt)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt());
    }
    digits.parse().map_err(|_| corrupt())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
    use shoal_wire::{Code, Op, Record, RECORD_LEN};

    const WALL: u64 = 1_767_225_600_000_000;
    const HOUR_US: u64 = 3_600_000_000;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("shoal-inc-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn node(id: u32, now: Instant, wall: u64, incarnation: u64) -> Node {
        let p = NodeParams {
            id,
            cluster: 3,
            max_datagram: 1400,
            flush: Duration::ZERO,
            keys: None,
            limits: StateLimits {
                load_stale: Duration::from_millis(500),
                max_resources: 100,
                session_capacity: 100,
                default_ttl: Duration::from_secs(10),
                clock_skew: Duration::from_millis(500),
            },
            max_peers: 16,
            modes: ModeRules::default(),
            store: Some(shoal_core::BacklogLimits {
                capacity: 100,
                batch: 100,
            }),
            relay_capacity: 16,
            hash_seed: u128::from(id),
        };
        Node::new(p, now, wall, incarnation)
    }

    /// Sends `n` save+send marks through the local API; returns the node's
    /// datagrams and the row ids it saved.
    fn speak(n: &mut Node, now: Instant, count: u64) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut reply = Vec::new();
        for k in 0..count {
            let r = Record {
                op: Op::SEND_SAVE,
                ttl_ms: 60_000,
                ..Record::new(Code::SESSION_MARK, [k, 1, 0, 0])
            };
            n.handle_local(now, &r.to_bytes(), &mut reply);
        }
        n.flush();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while n.poll_transmit(&mut buf) {
            out.push(buf.clone());
        }
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        while let Some(b) = n.take_save_batch(&mut rows) {
            ids.extend(rows.iter().map(|r| r[1]));
            n.save_acked(b);
        }
        (out, ids)
    }

    fn seqs(datagrams: &[Vec<u8>]) -> Vec<u64> {
        datagrams
            .iter()
            .flat_map(|d| d[40..d.len() - 4].chunks_exact(RECORD_LEN))
            .map(|c| u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")))
            .collect()
    }

    #[test]
    fn a_restart_with_the_clock_stepped_back_starts_above_the_previous_run() {
        let dir = Dir::new("back");
        let path = dir.0.join("n1.incarnation");
        let t0 = Instant::now();
        let mut peer = node(2, t0, WALL, WALL);

        let (mut file, first) = IncarnationFile::start(&path, WALL).expect("first start");
        assert_eq!(first, WALL, "first start: the clock");
        let mut a = node(1, t0, WALL, first);
        // A busy run: more records than microseconds go by.
        let (sent, ids_before) = speak(&mut a, t0, 50);
        for d in &sent {
            assert!(peer.receive(t0, d).is_ok());
        }
        file.keep_ahead(a.high_water()).expect("persist");
        let seqs_before = seqs(&sent);

        // kill -9, and the clock is stepped back an hour.
        let back = WALL - HOUR_US;
        let (_, second) = IncarnationFile::start(&path, back).expect("second start");
        assert!(
            second > a.high_water(),
            "above every value of the first run"
        );
        let t1 = t0 + Duration::from_millis(5);
        let mut b = node(1, t1, back, second);
        let (sent, ids_after) = speak(&mut b, t1, 50);
        for d in &sent {
            assert!(
                peer.receive(t1, d).is_ok(),
                "the restarted node is taken as a replay"
            );
        }
        let (_, p) = peer.peers().next().expect("peer 1");
        assert_eq!(p.restarts, 1);
        assert_eq!(peer.mark(t1, 49).mark, 1, "its records are applied");
        let max_before = ids_before.iter().chain(&seqs_before).max().expect("values");
        assert!(
            ids_after.iter().chain(&seqs(&sent)).all(|v| v > max_before),
            "row ids and record seqs repeat the previous run's"
        );
    }

    #[test]
    fn the_floor_is_persisted_atomically_and_kept_ahead() {
        let dir = Dir::new("ahead");
        let path = dir.0.join("inc");
        let (mut f, inc) = IncarnationFile::start(&path, WALL).expect("start");
        let on_disk = || std::fs::read_to_string(&path).expect("file");
        assert_eq!(on_disk(), format!("{}\n", WALL + RESERVE_US));
        assert!(!f.due(inc));
        f.keep_ahead(inc + RESERVE_US / 4).expect("not due");
        assert_eq!(f.floor, WALL + RESERVE_US);
        f.keep_ahead(inc + RESERVE_US / 2).expect("due");
        assert_eq!(f.floor, inc + RESERVE_US / 2 + RESERVE_US);
        assert_eq!(on_disk(), format!("{}\n", f.floor));
        assert!(!dir.0.join("inc.tmp").exists(), "temporary file renamed");
        // A start with the clock ahead of the floor takes the clock.
        let (_, later) = IncarnationFile::start(&path, WALL + HOUR_US).expect("start");
        assert_eq!(later, WALL + HOUR_US);
    }

    #[test]
    fn a_corrupt_or_unreadable_file_stops_the_start() {
        let dir = Dir::new("bad");
        let path = dir.0.join("inc");
        for bad in [
            "",
            "12",
            "12\n13\n",
            "-5\n",
            "abc\n",
            " 12\n",
            "99999999999999999999999\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = IncarnationFile::start(&path, WALL).expect_err(bad);
            assert!(
                matches!(e, IncarnationError::Corrupt { .. }),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("inc"), "names the file: {e}");
            assert_eq!(
                std::fs::read(&path).expect("kept"),
                bad.as_bytes(),
                "file untouched"
            );
        }
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("a directory in the way");
        let e = IncarnationFile::start(&path, WALL).expect_err("a directory");
        assert!(matches!(e, IncarnationError::Io { .. }), "{e}");
        let missing_dir = dir.0.join("no/such/dir/inc");
        assert!(IncarnationFile::start(&missing_dir, WALL).is_err());
    }
}
