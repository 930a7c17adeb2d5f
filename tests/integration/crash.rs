//! Crash loops: a writer appends checksummed records (fsync at known points) while making,
//! renaming and removing small files; the daemon is killed with SIGKILL at a random moment,
//! the dead mount detached and the mirror mounted again. After every cycle, every record
//! fsync'ed before the crash is on every replica, the replicas are identical, and repair
//! never compared a replica in full.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::Mirror;

const CYCLES: usize = 20;
const RECORD: usize = 4096;
/// Records between two fsyncs.
const SYNC_EVERY: u64 = 8;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Record `seq`: its number, a payload derived from it, and a checksum of both.
fn record(seq: u64) -> Vec<u8> {
    let mut r = vec![0u8; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in r[8..RECORD - 8].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    let sum = fnv(&r[..RECORD - 8]);
    r[RECORD - 8..].copy_from_slice(&sum.to_le_bytes());
    r
}

/// Checks that `path` starts with records `0..durable`, each intact.
fn check_log(path: &Path, durable: u64) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        data.len() as u64 >= durable * RECORD as u64,
        "{}: {} bytes, but {durable} records were fsync'ed",
        path.display(),
        data.len()
    );
    for seq in 0..durable {
        let at = seq as usize * RECORD;
        let r = &data[at..at + RECORD];
        let sum = u64::from_le_bytes(r[RECORD - 8..].try_into().unwrap());
        assert!(
            fnv(&r[..RECORD - 8]) == sum && r[..8] == seq.to_le_bytes(),
            "{}: fsync'ed record {seq} is damaged",
            path.display()
        );
    }
}

/// A small pseudo-random number generator, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Appends records to `log` and churns small files in `misc` until an operation fails
/// (the daemon is gone) or `stop` is set; `durable` is the count of records fsync'ed.
fn write_until_killed(log: PathBuf, misc: PathBuf, durable: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&log) else {
        return;
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if f.write_all(&record(seq)).is_err() {
            return;
        }
        seq += 1;
        if seq.is_multiple_of(SYNC_EVERY) {
            if f.sync_all().is_err() {
                return;
            }
            durable.store(seq, Ordering::SeqCst);
        }
        let n = seq % 40;
        let name = misc.join(format!("n{n}"));
        let done = match seq % 4 {
            0 => fs::write(&name, vec![n as u8; (seq % 7) as usize * 1000]),
            1 => fs::rename(&name, misc.join(format!("m{n}"))),
            2 => fs::remove_file(misc.join(format!("m{}", (n + 20) % 40))),
            _ => fs::set_permissions(
                &name,
                fs::Permissions::from_mode(0o600 | ((seq % 2) as u32 * 0o44)),
            ),
        };
        // Names churn at random: only a dead mount stops the writer.
        if let Err(e) = done
            && e.raw_os_error() == Some(libc::ENOTCONN)
        {
            return;
        }
    }
}

/// Runs the crash loop on a mirror mounted with `args`. With `slow_secondary`, replica 1
/// is a fault filesystem whose writes take 1 ms more while the writer runs, so that in
/// async mode its queue holds writes when the daemon dies.
fn crash_loop(args: &[&str], slow_secondary: bool) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut m = if slow_secondary {
        Mirror::setup(2).faulty(1).args(args).mount()
    } else {
        Mirror::with_args(2, args)
    };
    fs::create_dir(m.path("misc")).unwrap();
    let mut durable_counts = Vec::new();
    let mut lagging_at_crash = 0;
    for cycle in 0..CYCLES {
        let durable = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (log, misc) = (m.path(&format!("log{cycle}")), m.path("misc"));
            let (durable, stop) = (durable.clone(), stop.clone());
            std::thread::spawn(move || write_until_killed(log, misc, durable, stop))
        };
        if slow_secondary {
            m.faults(1).write_delay_us.store(1000, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100 + rng.next(500)));
        let lag = &m.status()["daemon"]["replicas"][1]["lag"]["operations"];
        if lag.as_u64().unwrap_or(0) > 0 {
            lagging_at_crash += 1;
        }
        m.kill_daemon();
        if slow_secondary {
            m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        durable_counts.push(durable.load(Ordering::SeqCst));
        m.mount();
        m.wait_in_sync();
        for (c, &count) in durable_counts.iter().enumerate() {
            let name = format!("log{c}");
            check_log(&m.path(&name), count);
            for r in 0..m.replicas.len() {
                check_log(&m.replica(r, &name), count);
            }
        }
        m.assert_in_sync();
    }
    let log = m.log();
    assert!(!log.contains("comparing replica in full"), "{log}");
    assert!(
        durable_counts.iter().filter(|&&c| c > 0).count() > CYCLES / 2,
        "the writer rarely got as far as an fsync: {durable_counts:?}"
    );
    if slow_secondary {
        assert!(
            lagging_at_crash > CYCLES / 2,
            "replica 1 had writes queued at only {lagging_at_crash} crashes"
        );
    }
}

#[test]
fn sync_mode_survives_twenty_crashes_with_nothing_fsynced_lost() {
    crash_loop(&[], false);
}

#[test]
fn async_mode_survives_twenty_crashes_with_writes_queued_and_nothing_fsynced_lost() {
    crash_loop(&["--mode", "async"], true);
}

#[test]
fn a_crash_half_way_through_a_rename_over_a_file_is_repaired() {
    let mut m = Mirror::setup(2).faulty(1).settling_often().mount();
    fs::write(m.path("target"), b"old contents").unwrap();
    fs::write(m.path("tmp"), b"new contents, saved by write-and-rename").unwrap();
    m.wait_settled();
    // Replica 1 answers each operation a second late, so the daemon dies after replica
    // 0 renamed and before replica 1 did; its pending operation then fails.
    m.faults(1).delay_us.store(1_000_000, Ordering::Relaxed);
    let renamer = {
        let (from, to) = (m.path("tmp"), m.path("target"));
        std::thread::spawn(move || fs::rename(from, to))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while m.replica(0, "tmp").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: killing the test's own daemon.
    unsafe { libc::kill(m.pid().unwrap() as i32, libc::SIGKILL) };
    m.faults(1).dead.store(true, Ordering::Relaxed);
    m.kill_daemon();
    let _ = renamer.join().unwrap();
    m.faults(1).delay_us.store(0, Ordering::Relaxed);
    m.faults(1).dead.store(false, Ordering::Relaxed);
    assert!(!m.replica(0, "tmp").exists(), "replica 0 never renamed");
    assert_eq!(fs::read(m.replica(1, "target")).unwrap(), b"old contents");
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(
        fs::read(m.path("target")).unwrap(),
        b"new contents, saved by write-and-rename"
    );
}
