//! How changes are acknowledged: the write quorum.

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

#[test]
fn a_write_quorum_beyond_the_replicas_is_refused() {
    let m = Mirror::new(1);
    for d in ["x", "y", "mnt2"] {
        fs::create_dir(m.dir.path().join(d)).unwrap();
    }
    for n in ["0", "3"] {
        let out = mirrorfs(&[
            OsStr::new("mount"),
            OsStr::new("--write-quorum"),
            OsStr::new(n),
            m.dir.path().join("x").as_os_str(),
            m.dir.path().join("y").as_os_str(),
            m.dir.path().join("mnt2").as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(1), "--write-quorum {n}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("write quorum must be from 1 to the number of replicas (2)"),
            "{err}"
        );
    }
}
