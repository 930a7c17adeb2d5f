//! A replica on another host: a directory served by sshd in a network namespace of the
//! test's own and mounted with sshfs. The full workload ends with identical replicas
//! (with what sshfs cannot hold refused alike on every replica, and reported), and a link
//! cut in the middle of a write loop never stalls the mount; once the link is back,
//! repair makes the replicas identical with nothing acknowledged lost.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::tree::{self, Snapshot};
use crate::common::{Mirror, cstr, last_errno, mirrorfs, renameat2, ts, utimens};

/// The tree replica `i` holds on its own disk: for the remote one, the directory sshd
/// serves (sshfs itself reports every file with one link).
fn on_disk(m: &Mirror, i: usize, remote: usize) -> Snapshot {
    let dir = if i == remote {
        m.dir.path().join(format!("backing{i}"))
    } else {
        m.replicas[i].clone()
    };
    tree::snapshot(&dir, true)
}

/// A snapshot without symlinks' own owners and times, which sshfs cannot set (its
/// setattr follows the link): the remote replica keeps those it made the link with.
fn without_link_attrs(mut snap: Snapshot) -> Snapshot {
    for node in snap.values_mut().filter(|n| n.kind == "symlink") {
        node.mtime = None;
        (node.uid, node.gid) = (0, 0);
    }
    snap
}

/// A snapshot with mtimes to the second.
fn to_the_second(mut snap: Snapshot) -> Snapshot {
    for node in snap.values_mut() {
        if let Some((_, ns)) = node.mtime.as_mut() {
            *ns = 0;
        }
    }
    snap
}

/// Every replica, on its disk, holds the tree the mount shows (`to_the_second`: their
/// mtimes compared to the second only).
fn assert_identical(m: &Mirror, remote: usize, to_the_second_only: bool) {
    let coarse = |snap: Snapshot| {
        if to_the_second_only {
            to_the_second(snap)
        } else {
            snap
        }
    };
    let view = coarse(tree::snapshot(&m.mnt, false));
    for i in 0..m.replicas.len() {
        let (view, disk) = if i == remote {
            (
                without_link_attrs(view.clone()),
                without_link_attrs(coarse(on_disk(m, i, remote))),
            )
        } else {
            (view.clone(), coarse(on_disk(m, i, remote)))
        };
        if let Some(diff) = tree::first_difference(&view, &disk) {
            panic!("replica {i} differs from the mount: {diff}");
        }
    }
}

/// `setxattr` through the mount: 0 or the errno.
fn set_xattr(m: &Mirror, rel: &str) -> i32 {
    let p = cstr(&m.path(rel));
    let name = c"user.note";
    // SAFETY: valid path, name and value.
    let r = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
    if r == 0 { 0 } else { last_errno() }
}

/// How the log and health name what sshfs cannot hold.
const LACKS: &str = "lacks rename flags (emulated), xattrs, special files, sub-second times, \
                     symlink owners and times";

#[test]
fn a_replica_on_another_host_ends_identical_after_the_full_workload() {
    let m = Mirror::setup(2).sshfs(1).mount();
    let st = m.status();
    let lacks = |i: usize| st["daemon"]["replicas"][i]["lacks"].clone();
    assert_eq!(lacks(0), serde_json::json!([]), "{st}");
    assert_eq!(
        lacks(1),
        serde_json::json!([
            "rename flags (emulated)",
            "xattrs",
            "special files",
            "sub-second times",
            "symlink owners and times"
        ]),
        "{st}"
    );

    fs::create_dir(m.path("d")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(m.path("d/big"), &data).unwrap();
    fs::write(m.path("d/f3"), b"three").unwrap();
    fs::write(m.path("a"), b"a").unwrap();
    fs::write(m.path("b"), b"b").unwrap();
    // What `mv` does: a rename that must not replace; then one that must be refused.
    assert_eq!(
        renameat2(&m, "d/f3", "d/f3.moved", libc::RENAME_NOREPLACE),
        0
    );
    assert_eq!(
        renameat2(&m, "a", "d/f3.moved", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    // A flag mirrorfs cannot provide there is refused alike.
    assert_eq!(
        renameat2(&m, "a", "d/whited", libc::RENAME_WHITEOUT),
        libc::EINVAL
    );
    assert_eq!(renameat2(&m, "a", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("a")).unwrap(), b"b");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"a");
    fs::create_dir(m.path("d/sub")).unwrap();
    assert_eq!(renameat2(&m, "d/sub", "a", libc::RENAME_EXCHANGE), 0);
    assert!(m.path("a").is_dir());
    fs::hard_link(m.path("b"), m.path("d/b.link")).unwrap();
    fs::set_permissions(m.path("d/big"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.path("b"), Some(1234), Some(5678)).unwrap();
    symlink("d/big", m.path("link")).unwrap();
    // A link's own times and owner, which sshfs would set on its target: the target
    // keeps its own on every replica.
    fs::write(m.path("d/target"), b"t").unwrap();
    let t = ts(1_000_000_000, 0);
    utimens(&m.path("d/target"), [t, t], 0);
    symlink("target", m.path("d/tlink")).unwrap();
    let t = ts(1_100_000_000, 0);
    utimens(&m.path("d/tlink"), [t, t], libc::AT_SYMLINK_NOFOLLOW);
    std::os::unix::fs::lchown(m.path("d/tlink"), Some(1234), Some(1234)).unwrap();
    let on_remote = fs::metadata(m.dir.path().join("backing1/d/target")).unwrap();
    assert_eq!((on_remote.mtime(), on_remote.uid()), (1_000_000_000, 0));
    let f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/big"))
        .unwrap();
    f.set_len(100_000).unwrap();
    drop(f);
    fs::remove_file(m.path("d/f3.moved")).unwrap();
    fs::remove_file(m.path("d/sub")).unwrap();
    fs::write(m.path("a/inside"), b"in the exchanged directory").unwrap();
    // sshfs holds no xattrs: refused through the mount as by a filesystem without them,
    // on the local replica too.
    assert_eq!(set_xattr(&m, "b"), libc::EOPNOTSUPP);
    // Nor fifos or devices (sshfs makes regular files only).
    let fifo = cstr(&m.path("d/fifo"));
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, -1);
    assert_eq!(last_errno(), libc::EPERM);

    m.wait_in_sync();
    assert_eq!(fs::metadata(m.path("b")).unwrap().uid(), 1234);
    assert_eq!(fs::metadata(m.path("b")).unwrap().nlink(), 2);
    assert_identical(&m, 1, false);
    let log = m.log();
    assert!(log.contains(LACKS), "the lack is logged: {log}");
    assert!(
        !log.contains("out of sync"),
        "nothing fell out of sync: {log}"
    );
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("its filesystem {LACKS}")), "{text}");
}

#[test]
fn a_cut_link_to_the_remote_replica_never_stalls_a_write_loop() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let bound = TIMEOUT + Duration::from_secs(1);
    let m = Mirror::setup(2)
        .sshfs(1)
        .args(&["--replica-timeout", "2", "--cache-ttl", "0"])
        .mount();
    fs::create_dir(m.path("w")).unwrap();
    fs::write(m.path("before"), b"written before the cut").unwrap();
    m.wait_in_sync();

    // The loop writes numbered files and reads the first back, each step timed; it
    // stops when told to, and says what it had acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, first, stop) = (m.path("w"), m.path("before"), stop.clone());
        std::thread::spawn(move || {
            let mut acked: Vec<(PathBuf, Vec<u8>)> = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (path, body) = (dir.join(format!("{n}")), format!("file {n}\n").repeat(50));
                fs::write(&path, &body).unwrap();
                acked.push((path, body.into_bytes()));
                assert_eq!(fs::read(&first).unwrap(), b"written before the cut");
                slowest = slowest.max(started.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (acked, slowest)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let host = m.remote(1);
    host.cut();
    let cut = Instant::now();
    let path = m.replicas[1].display().to_string();
    let noticed = loop {
        let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.contains(&path)).unwrap_or_default();
        if out.status.code() == Some(1) && line.contains("failed") {
            break cut.elapsed();
        }
        if cut.elapsed() > Duration::from_secs(20) {
            host.restore();
            panic!("health never said the remote replica failed: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let (acked, slowest) = writer.join().expect("the write loop failed");
    assert!(
        slowest <= bound,
        "a step of the write loop took {slowest:?} while the link was cut"
    );
    assert!(acked.len() > 50, "the loop went on: {} files", acked.len());
    eprintln!(
        "remote replica failed {noticed:?} after the cut; slowest step {slowest:?}; {} files",
        acked.len()
    );

    host.restore();
    m.wait_in_sync();
    // Once (under load in CI) a file written around the cut was left with the server's
    // own sub-second stamp of a write, in the same second as the mount's time: sshfs
    // returns from a write before the server has done it. Contents, and times to the
    // second, must be the same.
    assert_identical(&m, 1, true);
    let backing = m.dir.path().join("backing1");
    for (path, body) in &acked {
        let rel = path.strip_prefix(&m.mnt).unwrap();
        assert_eq!(&fs::read(path).unwrap(), body, "{}", rel.display());
        assert_eq!(
            &fs::read(backing.join(rel)).unwrap(),
            body,
            "{} on the remote replica",
            rel.display()
        );
    }
}
