//! A replica that fails where the others succeed is marked out of sync for that path,
//! reported by `mirrorfs health`, and not read from for it; the application sees success.

use std::ffi::OsStr;
use std::fs;

use crate::common::{Mirror, mirrorfs};

fn replica_state(m: &Mirror, i: usize) -> (String, Vec<String>) {
    let s = m.status();
    let r = &s["daemon"]["replicas"][i];
    let paths = r["out_of_sync"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["scope"].as_str().unwrap(),
                p["path"].as_str().unwrap()
            )
        })
        .collect();
    (r["state"].as_str().unwrap().to_string(), paths)
}

#[test]
fn a_full_replica_is_marked_and_writes_keep_succeeding() {
    let m = Mirror::setup(3).tmpfs(1, "1m").mount();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("big"), &data).unwrap();
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
    assert_eq!(fs::read(m.replica(0, "big")).unwrap(), data);
    assert_eq!(fs::read(m.replica(2, "big")).unwrap(), data);
    let (state, paths) = replica_state(&m, 1);
    assert_eq!(state, "failed");
    assert!(paths.contains(&"data:/big".to_string()), "{paths:?}");
    assert_eq!(replica_state(&m, 0).0, "in-sync");
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("MIRRORFS WARNING - 1/3 failed |"),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("ENOSPC="), "{text}");
    assert_eq!(m.log().matches("replica failed").count(), 1, "logged once");
    // Later changes skip the failed replica and are recorded for it.
    fs::write(m.path("later"), b"x").unwrap();
    let (_, paths) = replica_state(&m, 1);
    assert!(paths.contains(&"data:/later".to_string()), "{paths:?}");
}

#[test]
fn a_primary_missing_a_file_is_not_read_for_it() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"old").unwrap();
    // The primary loses the file behind the mirror's back.
    fs::remove_file(m.replica(0, "f")).unwrap();
    fs::write(m.path("f"), b"new contents").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"new contents");
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    let (state, paths) = replica_state(&m, 0);
    assert_eq!(state, "degraded");
    assert!(paths.contains(&"data:/f".to_string()), "{paths:?}");
    assert!(paths.contains(&"entries:/".to_string()), "{paths:?}");
    assert_eq!(replica_state(&m, 1).0, "in-sync");
}

#[test]
fn every_replica_failing_alike_is_the_answer_not_a_fault() {
    let m = Mirror::new(3);
    fs::create_dir(m.path("d")).unwrap();
    assert!(fs::create_dir(m.path("d")).is_err());
    assert!(fs::remove_file(m.path("nope")).is_err());
    for i in 0..3 {
        assert_eq!(replica_state(&m, i).0, "in-sync");
    }
}

#[test]
fn a_read_error_fails_over_to_another_replica() {
    let m = Mirror::setup(3).faulty(0).faulty(1).faulty(2).mount();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(m.path("f"), &data).unwrap();
    // Replica 0 is the fastest, so reads go to it first (once the background samples
    // have measured the others' delay).
    for i in 1..3 {
        m.faults(i)
            .delay_us
            .store(2000, std::sync::atomic::Ordering::Relaxed);
    }
    m.wait_slower(&[1, 2], 0);
    m.faults(0).eio_reads.lock().unwrap().insert("f".into());
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
    let (state, paths) = replica_state(&m, 0);
    assert_eq!(state, "failed");
    assert!(paths.contains(&"data:/f".to_string()), "{paths:?}");
    // Once marked, the replica is not read for that file even after it recovers.
    m.faults(0).eio_reads.lock().unwrap().clear();
    fs::write(m.replica(0, "f"), b"stale").ok();
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
}

#[test]
fn a_dead_replica_does_not_stop_the_mount() {
    let m = Mirror::setup(3).faulty(1).mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/before"), b"1").unwrap();
    m.faults(1)
        .dead
        .store(true, std::sync::atomic::Ordering::Relaxed);
    fs::write(m.path("d/after"), b"2").unwrap();
    fs::write(m.path("d/before"), b"3").unwrap();
    fs::rename(m.path("d/after"), m.path("d/moved")).unwrap();
    assert_eq!(fs::read(m.path("d/moved")).unwrap(), b"2");
    assert_eq!(fs::read(m.path("d/before")).unwrap(), b"3");
    assert_eq!(replica_state(&m, 1).0, "failed");
    for i in [0, 2] {
        assert_eq!(replica_state(&m, i).0, "in-sync");
        assert_eq!(fs::read(m.replica(i, "d/moved")).unwrap(), b"2");
    }
}

#[test]
fn a_failed_rename_marks_nothing() {
    let m = Mirror::setup(2).faulty(1).mount();
    fs::create_dir_all(m.path("a/d/sub")).unwrap();
    fs::create_dir_all(m.path("x/e/full")).unwrap();
    // Replica 1 misses a chmod of x, so it is out of date for x.
    m.faults(1)
        .dead
        .store(true, std::sync::atomic::Ordering::Relaxed);
    fs::set_permissions(
        m.path("x"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    m.faults(1)
        .dead
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (_, before) = replica_state(&m, 1);
    assert!(before.contains(&"data:/x".to_string()), "{before:?}");
    // Renaming a/d over the non-empty x/e fails; replica 1 was not asked (x is stale
    // there) and must not be marked for a.
    let e = fs::rename(m.path("a/d"), m.path("x/e")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let (_, after) = replica_state(&m, 1);
    assert_eq!(before, after, "a failed rename changed the marks");
}
