//! How changes are acknowledged: the write quorum, and async mode's queues (lag shown,
//! bounded, repaired; reads never older than what was written).

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::sync::atomic::Ordering;

use crate::common::{Mirror, mirrorfs};

#[test]
fn with_a_write_quorum_of_two_one_failure_is_tolerated_and_two_give_eio() {
    let m = Mirror::setup(3)
        .faulty(1)
        .faulty(2)
        .args(&["--write-quorum", "2"])
        .mount();
    fs::write(m.path("a"), b"before").unwrap();
    let mut open = fs::OpenOptions::new()
        .append(true)
        .open(m.path("a"))
        .unwrap();

    m.faults(1).dead.store(true, Ordering::Relaxed);
    fs::write(m.path("b"), b"one replica down").unwrap();
    open.write_all(b"+1").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    assert_eq!(fs::read(m.replica(2, "b")).unwrap(), b"one replica down");

    m.faults(2).dead.store(true, Ordering::Relaxed);
    // The change that finds the second replica dead reaches only one: EIO.
    let e = open.write_all(b"+2").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // Then nothing is even tried.
    for e in [
        fs::write(m.path("c"), b"x").unwrap_err(),
        fs::create_dir(m.path("dir2")).unwrap_err(),
        fs::rename(m.path("b"), m.path("b2")).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }
    assert!(!m.replica(0, "c").exists() && !m.replica(0, "dir2").exists());
    assert!(m.replica(0, "b").exists());
    // Reads go on.
    assert_eq!(fs::read(m.path("b")).unwrap(), b"one replica down");

    m.faults(1).dead.store(false, Ordering::Relaxed);
    m.faults(2).dead.store(false, Ordering::Relaxed);
    m.wait_in_sync();
    fs::write(m.path("c"), b"back").unwrap();
    drop(open);
    m.assert_in_sync();
}

/// Two replica directories and a mount point, made in `m`'s directory, for mounts that
/// are expected to be refused.
fn spare_dirs(m: &Mirror) -> [std::path::PathBuf; 3] {
    ["x", "y", "mnt2"].map(|d| {
        let p = m.dir.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    })
}

#[test]
fn a_write_quorum_beyond_the_replicas_is_refused() {
    let m = Mirror::new(1);
    let dirs = spare_dirs(&m);
    for n in ["0", "3"] {
        let out = mirrorfs(&[
            OsStr::new("mount"),
            OsStr::new("--write-quorum"),
            OsStr::new(n),
            dirs[0].as_os_str(),
            dirs[1].as_os_str(),
            dirs[2].as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(1), "--write-quorum {n}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("write quorum must be from 1 to the number of replicas (2)"),
            "{err}"
        );
    }
}

fn lag(m: &Mirror, i: usize) -> serde_json::Value {
    m.status()["daemon"]["replicas"][i]["lag"].clone()
}

#[test]
fn async_lag_is_shown_never_read_bounded_and_repaired() {
    let m = Mirror::setup(2)
        .faulty(0)
        .faulty(1)
        .args(&["--mode", "async", "--max-lag", "4M,1000"])
        .mount();
    assert_eq!(m.status()["daemon"]["mode"], "async");
    // Replica 0, the primary, is slow at everything, so reads prefer replica 1 ...
    m.faults(0).delay_us.store(1000, Ordering::Relaxed);
    m.wait_slower(&[0], 1);
    // ... while replica 1 is slower still at writing: it falls behind.
    m.faults(1).write_delay_us.store(30_000, Ordering::Relaxed);
    let first: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("f"), &first).unwrap();
    let l = lag(&m, 1);
    assert!(l["operations"].as_u64().unwrap() > 0, "{l}");
    assert!(l["bytes"].as_u64().unwrap() > 0, "{l}");
    assert!(l["oldest_seconds"].as_f64().unwrap() > 0.0, "{l}");
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(" lag "));
    // Reading it back never takes the replica that has writes queued for it.
    let reads_before = m.faults(1).reads.load(Ordering::Relaxed);
    assert_eq!(fs::read(m.path("f")).unwrap(), first);
    assert!(lag(&m, 1)["operations"].as_u64().unwrap() > 0);
    assert_eq!(m.faults(1).reads.load(Ordering::Relaxed), reads_before);
    // More than 4 MiB queued: the lane trips, the replica is marked and repaired.
    let second: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 241) as u8).collect();
    fs::write(m.path("g"), &second).unwrap();
    let l = lag(&m, 1);
    assert!(l["trips"].as_u64().unwrap() >= 1, "{l}");
    assert!(l["bytes"].as_u64().unwrap() <= 4 << 20, "{l}");
    assert!(m.log().contains("--max-lag"), "{}", m.log());
    m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
    m.faults(0).delay_us.store(0, Ordering::Relaxed);
    m.wait_in_sync();
    assert_eq!(lag(&m, 1)["operations"], 0);
    assert_eq!(fs::read(m.path("g")).unwrap(), second);
    m.assert_in_sync();
}

#[test]
fn mode_options_that_do_not_go_together_are_refused() {
    let m = Mirror::new(1);
    let dirs = spare_dirs(&m);
    for (args, msg) in [
        (
            &["--mode", "async", "--write-quorum", "2"][..],
            "--write-quorum applies to --mode sync",
        ),
        (
            &["--max-lag", "1M"][..],
            "--max-lag and --fsync-all apply to --mode async",
        ),
        (
            &["--mode", "async", "--max-lag", "lots"][..],
            "max lag \"lots\"",
        ),
    ] {
        let mut all: Vec<&OsStr> = vec![OsStr::new("mount")];
        all.extend(args.iter().map(OsStr::new));
        all.extend(dirs.iter().map(|d| d.as_os_str()));
        let out = mirrorfs(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

#[test]
fn async_fsync_flushes_the_primary_or_with_fsync_all_every_replica() {
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 239) as u8).collect();
    for all in [false, true] {
        let mut args = vec!["--mode", "async"];
        if all {
            args.push("--fsync-all");
        }
        let m = Mirror::setup(2).faulty(1).args(&args).mount();
        m.faults(1).write_delay_us.store(30_000, Ordering::Relaxed);
        let mut f = fs::File::create(m.path("f")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // Bytes, not operations: the status command's own fork and exec closes a copy of
        // `f`, and that close may queue the timestamps (no bytes) meanwhile.
        let queued = lag(&m, 1)["bytes"].as_u64().unwrap();
        if all {
            assert_eq!(
                queued, 0,
                "--fsync-all returned before replica 1 had the data"
            );
            assert_eq!(fs::read(m.replica(1, "f")).unwrap(), data);
        } else {
            assert!(queued > 0, "fsync waited for the secondary");
        }
        m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
        drop(f);
        m.wait_in_sync();
        m.assert_in_sync();
    }
}

#[test]
fn a_clean_unmount_leaves_nothing_to_repair_in_either_mode() {
    for mode in ["sync", "async"] {
        let mut m = Mirror::setup(2).faulty(1).args(&["--mode", mode]).mount();
        // In async mode replica 1 is still catching up when the unmount starts.
        m.faults(1).write_delay_us.store(5_000, Ordering::Relaxed);
        fs::create_dir(m.path("d")).unwrap();
        for i in 0..20 {
            fs::write(m.path(&format!("d/f{i}")), vec![i as u8; 256 << 10]).unwrap();
        }
        fs::rename(m.path("d/f0"), m.path("d/g0")).unwrap();
        m.unmount();
        m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
        m.mount();
        let st = m.status();
        assert_eq!(st["status"], "OK", "{mode}: {st}");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let repair = &m.status()["daemon"]["repair"];
        assert_eq!(repair["files_repaired"], 0, "{mode}: {repair}");
        assert!(!m.log().contains("did not end cleanly"), "{mode}");
        m.assert_in_sync();
    }
}
