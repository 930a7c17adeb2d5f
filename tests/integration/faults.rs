//! Replicas that fail for real: a dead disk (the fault filesystem), a filesystem that
//! fills up, turns read-only, or vanishes. The failing replica is skipped, logged once and
//! reported; the mount keeps serving; a replica that works again is re-admitted and
//! repaired until every replica is identical again.

use std::ffi::OsStr;
use std::fs;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{Mirror, Unmount, mirrorfs, remount, run};

fn state(m: &Mirror, i: usize) -> String {
    m.status()["daemon"]["replicas"][i]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits (up to 20 s) until replica `i` is in `want`.
pub fn wait_for_state(m: &Mirror, i: usize, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = state(m, i);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {i} stayed {now}, not {want}: {}",
            m.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn when_every_replica_fails_the_application_gets_eio_not_a_hang() {
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    fs::write(m.path("f"), b"x").unwrap();
    for i in 0..2 {
        m.faults(i).dead.store(true, Ordering::Relaxed);
    }
    let started = Instant::now();
    let e = fs::write(m.path("g"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let e = fs::read(m.path("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all 2 replicas failed"));
    for i in 0..2 {
        m.faults(i).dead.store(false, Ordering::Relaxed);
    }
}

/// Closes `f` as close(2) does, returning its result (`File`'s drop ignores it).
fn close(f: fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is owned here and closed once.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn an_error_a_replica_reports_at_close_reaches_the_application() {
    use std::io::Write;
    // The fault filesystem, like a network one, may report a write's error only when
    // the file is closed: mirrorfs answers closes there (on local filesystems it tells
    // the kernel not to ask).
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    let mut f = fs::File::create(m.path("one")).unwrap();
    f.write_all(b"kept by replica 0").unwrap();
    m.faults(1).enospc_at_close.store(true, Ordering::Relaxed);
    close(f).expect("one replica kept the file");
    // The replica that failed it is marked for the file, and repair mends it.
    let last = &m.status()["daemon"]["replicas"][1]["last_error"];
    assert_eq!(
        (last["op"].as_str(), last["errno"].as_i64()),
        (Some("flush"), Some(28))
    );
    m.wait_in_sync();
    let mut f = fs::File::create(m.path("both")).unwrap();
    f.write_all(b"kept by none").unwrap();
    m.faults(0).enospc_at_close.store(true, Ordering::Relaxed);
    let e = close(f).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    for i in 0..2 {
        m.faults(i).enospc_at_close.store(false, Ordering::Relaxed);
    }
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_failed_replica_is_readmitted_when_it_works_again() {
    let m = Mirror::setup(3).faulty(1).mount();
    fs::write(m.path("before"), b"1").unwrap();
    m.faults(1).dead.store(true, Ordering::Relaxed);
    fs::write(m.path("during"), b"2").unwrap();
    assert_eq!(state(&m, 1), "failed");
    let r1 = &m.status()["daemon"]["replicas"][1];
    assert_eq!(r1["failure"]["errno"], libc::EIO);
    assert!(r1["errors_by_kind"]["EIO"].as_u64().unwrap() >= 1);
    fs::create_dir(m.path("dir-during")).unwrap();
    fs::rename(m.path("before"), m.path("dir-during/moved")).unwrap();
    m.faults(1).dead.store(false, Ordering::Relaxed);
    m.wait_in_sync();
    assert!(m.log().contains("replica works again"));
    m.assert_in_sync();
    // Re-admitted, it takes new changes again.
    fs::write(m.path("after"), b"3").unwrap();
    assert_eq!(fs::read(m.dir.path().join("backing1/after")).unwrap(), b"3");
}

#[test]
fn a_replica_that_fills_up_is_repaired_once_it_has_room() {
    let m = Mirror::setup(3).tmpfs(1, "1m").mount();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("big"), &data).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/small"), b"small").unwrap();
    assert_eq!(state(&m, 1), "failed");
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
    run(Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&m.replicas[1]));
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, "big")).unwrap(), data);
    let repaired = &m.status()["daemon"]["repair"];
    assert!(
        repaired["bytes_repaired"].as_u64().unwrap() >= 3 << 20,
        "{repaired}"
    );
}

#[test]
fn a_replica_that_turns_read_only_fails_and_comes_back() {
    let m = Mirror::setup(2).bind(1).mount();
    let r1 = m.replicas[1].clone();
    fs::write(m.path("f"), b"1").unwrap();
    remount(&r1, "ro");
    fs::write(m.path("g"), b"2").unwrap();
    assert_eq!(state(&m, 1), "failed");
    let st = m.status();
    assert_eq!(
        st["daemon"]["replicas"][1]["failure"]["errno"],
        libc::EROFS,
        "{st}"
    );
    remount(&r1, "rw");
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_replica_whose_filesystem_vanishes_fails_and_is_compared_in_full_when_back() {
    let m = Mirror::setup(2).tmpfs(1, "16m").mount();
    fs::write(m.path("f"), b"before").unwrap();
    let r1 = m.replicas[1].clone();
    run(Command::new("umount").arg("-l").arg(&r1));
    wait_for_state(&m, 1, "failed");
    fs::write(m.path("f"), b"after").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"after");
    // An empty filesystem comes back at the path.
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&r1));
    let _tmpfs = Unmount(r1.clone());
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(r1.join("f")).unwrap(), b"after");
    assert!(m.log().contains("compared in full"));
}

#[test]
fn a_replica_that_comes_back_with_its_old_contents_is_brought_up_to_date() {
    let m = Mirror::setup(2).bind(1).mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/kept"), b"old").unwrap();
    fs::write(m.path("d/removed"), b"x").unwrap();
    let r1 = m.replicas[1].clone();
    run(Command::new("umount").arg("-l").arg(&r1));
    wait_for_state(&m, 1, "failed");
    fs::write(m.path("d/kept"), b"new").unwrap();
    fs::remove_file(m.path("d/removed")).unwrap();
    fs::write(m.path("d/added"), b"added").unwrap();
    // The same filesystem, with what it held, comes back.
    run(Command::new("mount")
        .arg("--bind")
        .arg(m.dir.path().join("backing1"))
        .arg(&r1));
    m.wait_in_sync();
    m.assert_in_sync();
    assert!(!r1.join("d/removed").exists());
}

#[test]
fn health_reports_latency_and_free_space() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), vec![1u8; 100_000]).unwrap();
    let _ = fs::read(m.path("f")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = m.status();
    for r in st["daemon"]["replicas"].as_array().unwrap() {
        assert!(r["write_latency_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["free_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("'failed'=0;0;1;0;2"), "{text}");
    assert!(text.contains("latency read"), "{text}");
}

#[test]
fn repair_full_finds_and_fixes_what_no_record_knows() {
    let m = Mirror::new(3);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"the right bytes").unwrap();
    fs::write(m.path("g"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("d/f", m.path("l")).unwrap();
    m.wait_in_sync();
    // Replica 2 rots behind the mirror's back: same size, other bytes; a lost file; an
    // extra file; a changed mode.
    fs::write(m.replica(2, "d/f"), b"the wrong bytes").unwrap();
    let mut g = fs::read(m.replica(2, "g")).unwrap();
    g[2 << 20] ^= 0xff;
    fs::write(m.replica(2, "g"), &g).unwrap();
    fs::remove_file(m.replica(2, "l")).unwrap();
    fs::write(m.replica(2, "d/extra"), b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.replica(2, "d"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = mirrorfs(&[
        OsStr::new("repair"),
        OsStr::new("--full"),
        m.mnt.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(2, "d/f")).unwrap(), b"the right bytes");
}

#[test]
fn writes_during_a_repair_are_neither_lost_nor_left_different() {
    let m = Mirror::setup(2)
        .faulty(1)
        .args(&["--repair-rate", "4M"])
        .mount();
    m.faults(1).dead.store(true, Ordering::Relaxed);
    fs::write(m.path("big"), vec![1u8; 16 << 20]).unwrap();
    m.faults(1).dead.store(false, Ordering::Relaxed);
    // While the slow repair copies it, the file keeps changing.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    for i in 0..40u64 {
        f.write_all_at(&[i as u8 + 2; 4096], (i * 397_123) % (16 << 20))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    f.write_all_at(b"tail", 16 << 20).unwrap();
    drop(f);
    m.wait_in_sync();
    m.assert_in_sync();
}

/// Reads a file through the mount past the kernel's page cache (which keeps what was read
/// across opens), so that the read reaches a replica.
fn read_uncached(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = fs::File::open(path)?;
    // SAFETY: a valid descriptor; the advice only drops clean cached pages.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

#[test]
fn replicas_slow_at_namespace_changes_take_them_at_once() {
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    // Both replicas turn slow, as network filesystems are: 200 ms per operation.
    for i in 0..2 {
        m.faults(i).delay_us.store(200_000, Ordering::Relaxed);
    }
    let apart = || {
        let started = |i: usize| *m.faults(i).mkdirs.lock().unwrap().last().unwrap();
        let (a, b) = (started(0), started(1));
        a.max(b) - a.min(b)
    };
    // The first change finds them fast, as they were: one after the other.
    fs::create_dir(m.path("first")).unwrap();
    assert!(apart() >= Duration::from_millis(200), "{:?}", apart());
    // It measured them slow: the next reaches both at once and waits for one delay, not
    // the sum of them.
    fs::create_dir(m.path("second")).unwrap();
    assert!(apart() < Duration::from_millis(150), "{:?}", apart());
    for i in 0..2 {
        m.faults(i).delay_us.store(0, Ordering::Relaxed);
    }
    m.assert_in_sync();
}

#[test]
fn reads_avoid_a_replica_ten_times_slower() {
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("f"), &data).unwrap();
    // The first replica, which reads prefer while all are alike, turns slow: each of its
    // operations takes 2 ms more (a passthrough operation takes well under 0.2 ms).
    m.faults(0).delay_us.store(2000, Ordering::Relaxed);
    let reads = |i: usize| m.faults(i).reads.load(Ordering::Relaxed);
    // Reads and the background samples measure it; once the measurements show it
    // slower, reads go to the fast replica.
    assert_eq!(read_uncached(&m.path("f")).unwrap(), data);
    m.wait_slower(&[0], 1);
    let (slow0, fast0) = (reads(0), reads(1));
    for _ in 0..20 {
        assert_eq!(read_uncached(&m.path("f")).unwrap(), data);
    }
    let (slow, fast) = (reads(0) - slow0, reads(1) - fast0);
    assert!(
        fast > 0 && slow * 10 <= fast,
        "{slow} reads went to the slow replica, {fast} to the fast one"
    );
    // It is slow, not broken: nothing failed and nothing is out of sync.
    assert_eq!(state(&m, 0), "in-sync");
    // Once it is fast again, the background samples bring reads back to it.
    m.faults(0).delay_us.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = reads(0);
        assert_eq!(read_uncached(&m.path("f")).unwrap(), data);
        if reads(0) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never went back to the first replica"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_close_of_a_written_file_returns_once_its_replicas_have_one_mtime() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    let mut f = fs::File::create(m.path("f")).unwrap();
    // The second replica takes the write 10 ms later: its own mtime differs.
    m.faults(1).write_delay_us.store(10_000, Ordering::Relaxed);
    f.write_all(b"y").unwrap();
    m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
    // Two descriptors of the open file (as a forked child holds one until its exec)
    // closed at once; the first replica, whose times the others get, answers slowly.
    let dup = f.try_clone().unwrap();
    m.faults(0).delay_us.store(200_000, Ordering::Relaxed);
    let barrier = std::sync::Barrier::new(2);
    // Read beside the fault filesystems, which would make each look wait too.
    let mtimes = |i: usize| {
        let md = fs::metadata(m.dir.path().join(format!("backing{i}/f"))).unwrap();
        (md.mtime(), md.mtime_nsec())
    };
    std::thread::scope(|s| {
        for file in [f, dup] {
            let (barrier, mtimes) = (&barrier, &mtimes);
            s.spawn(move || {
                barrier.wait();
                drop(file);
                assert_eq!(mtimes(0), mtimes(1), "a close returned first");
            });
        }
    });
    m.faults(0).delay_us.store(0, Ordering::Relaxed);
    m.assert_in_sync();
}

#[test]
fn a_stat_while_a_file_is_written_caches_the_times_every_replica_ends_with() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let m = Mirror::setup(2).faulty(0).faulty(1).mount();
    fs::write(m.path("f"), b"x").unwrap();
    // The first replica, where writes go first and whose times close gives the others,
    // is slow to read: getattr would rather ask the second.
    m.faults(0).delay_us.store(2000, Ordering::Relaxed);
    assert_eq!(read_uncached(&m.path("f")).unwrap(), b"x");
    m.wait_slower(&[0], 1);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("f"))
        .unwrap();
    // The second replica takes the write 10 ms later: its mtime differs until close.
    m.faults(1).write_delay_us.store(10_000, Ordering::Relaxed);
    f.write_all(b"y").unwrap();
    m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
    // The kernel caches what this stat answers, for as long as its cache TTL (a day).
    let during = f.metadata().unwrap();
    drop(f);
    m.faults(0).delay_us.store(0, Ordering::Relaxed);
    let after = fs::metadata(m.path("f")).unwrap();
    let on = |i: usize| fs::metadata(m.replica(i, "f")).unwrap();
    let mtime = |md: &fs::Metadata| (md.mtime(), md.mtime_nsec());
    assert_eq!(
        mtime(&on(0)),
        mtime(&on(1)),
        "replicas end with one mtime; log:\n{}",
        m.log()
    );
    assert_eq!(mtime(&during), mtime(&on(0)), "the stat during the write");
    assert_eq!(mtime(&after), mtime(&on(0)), "the stat after close");
    m.assert_in_sync();
}
