//! Mounting and unmounting: background and foreground daemons, clean shutdown by
//! `mirrorfs umount`, `umount` and signals, data kept across mounts, and what health
//! reports in each state.

use std::ffi::OsStr;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, Mirror, Unmount, daemon_pid, mirrorfs, run};

fn mounted(path: &std::path::Path) -> bool {
    mirrorfs::sys::mountinfo::mounted_at(path)
        .unwrap()
        .is_some()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn data_survives_unmount_and_remount() {
    let mut m = Mirror::new(3);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"kept").unwrap();
    let pid = m.pid().unwrap();
    m.unmount();
    // `mirrorfs umount` returns once the daemon is gone and the replicas are complete.
    assert!(!alive(pid));
    assert!(!mounted(&m.mnt));
    for i in 0..3 {
        assert_eq!(fs::read(m.replica(i, "d/f")).unwrap(), b"kept");
    }
    m.mount();
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"kept");
    m.assert_in_sync();
}

#[test]
fn plain_umount_stops_the_daemon() {
    let mut m = Mirror::new(2);
    fs::write(m.path("f"), b"x").unwrap();
    let pid = m.pid().unwrap();
    let out = Command::new("umount").arg(&m.mnt).output().unwrap();
    assert!(out.status.success());
    wait_until("the daemon to exit", || !alive(pid));
    // A new mount may follow at once.
    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x");
}

#[test]
fn umount_of_a_busy_mount_is_refused_clearly() {
    let m = Mirror::new(2);
    let _open = fs::File::create(m.path("busy")).unwrap();
    let out = mirrorfs(&[OsStr::new("umount"), m.mnt.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    assert!(mounted(&m.mnt));
}

#[test]
fn umount_refuses_what_is_not_a_mirrorfs_mount() {
    let t = tempfile::tempdir().unwrap();
    let out = mirrorfs(&[OsStr::new("umount"), t.path().as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"));
    let out = mirrorfs(&[OsStr::new("umount"), OsStr::new("/")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mirrorfs mount"));
}

#[test]
fn foreground_mode_serves_until_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, mnt) = (t.path().join("a"), t.path().join("b"), t.path().join("mnt"));
    for d in [&a, &b, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["mount", "-f"])
        .args([&a, &b, &mnt])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = Unmount(mnt.clone());
    wait_until("the foreground mount", || mounted(&mnt));
    fs::write(mnt.join("f"), b"fg").unwrap();
    assert_eq!(daemon_pid(&mnt), Some(child.id()));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!mounted(&mnt));
    assert_eq!(fs::read(b.join("f")).unwrap(), b"fg");
}

#[test]
fn health_reports_ok_unknown_and_a_dead_daemon() {
    let m = Mirror::new(2);
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("MIRRORFS OK - 2/2 replicas in sync | 'degraded'=0;"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);

    let out = mirrorfs(&[OsStr::new("health"), m.dir.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("MIRRORFS UNKNOWN"));

    // SAFETY: killing the test's own daemon.
    unsafe { libc::kill(m.pid().unwrap() as i32, libc::SIGKILL) };
    wait_until("the daemon to die", || !alive(m.pid().unwrap()));
    let started = Instant::now();
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("MIRRORFS CRITICAL"));
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_read_only_mount_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, mnt) = (t.path().join("a"), t.path().join("b"), t.path().join("mnt"));
    for d in [&a, &b, &mnt] {
        fs::create_dir(d).unwrap();
    }
    fs::write(a.join("f"), b"a").unwrap();
    fs::write(b.join("f"), b"a").unwrap();
    // The colon-separated form, as in fstab.
    let list = format!("{}:{}", a.display(), b.display());
    let out = Command::new(BIN)
        .args(["mount", &list])
        .arg(&mnt)
        .args(["-o", "ro", "--init", "--source"])
        .arg(&a)
        .arg("--log-file")
        .arg(t.path().join("log"))
        .output()
        .unwrap();
    let _guard = Unmount(mnt.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"a");
    let e = fs::write(mnt.join("f"), b"b").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::create_dir(mnt.join("d")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    let out = mirrorfs(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(out.status.success());
    assert!(!a.join(".mirrorfs").exists() && !b.join(".mirrorfs").exists());
}

#[test]
fn runtime_records_are_private_to_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mirror::new(2);
    let dir = fs::symlink_metadata("/run/mirrorfs").unwrap();
    assert!(dir.is_dir());
    assert_eq!((dir.uid(), dir.permissions().mode() & 0o777), (0, 0o755));
    let key = mirrorfs::control::runtime::key(&m.mnt);
    let json = fs::symlink_metadata(format!("/run/mirrorfs/{key}.json")).unwrap();
    assert_eq!(json.permissions().mode() & 0o777, 0o644);
    let sock = fs::symlink_metadata(format!("/run/mirrorfs/{key}.sock")).unwrap();
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_daemon_leaves_the_callers_directory_and_sighup_reopens_its_log() {
    let m = Mirror::new(2);
    let pid = m.pid().unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/")
    );
    // Rotate the log: the daemon keeps serving and writes to a new file at the same path.
    let rotated = m.log_path().with_extension("1");
    fs::rename(m.log_path(), &rotated).unwrap();
    // SAFETY: signalling our own daemon.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_until("the new log file", || m.log_path().exists());
    fs::write(m.path("still-mounted"), b"yes").unwrap();
    assert!(mounted(&m.mnt));
    assert!(fs::read_to_string(&rotated).unwrap().contains("mounted"));
}

#[test]
fn read_only_replicas_mount_read_only() {
    let mut m = Mirror::new(2);
    fs::write(m.path("f"), b"data").unwrap();
    m.unmount();
    // Make each replica a read-only bind mount of itself.
    let _binds: Vec<Unmount> = m.replicas.iter().map(|r| Unmount(r.clone())).collect();
    for r in &m.replicas {
        run(Command::new("mount").arg("--bind").arg(r).arg(r));
        run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(r));
    }
    m.extra_args = vec!["-o".into(), "ro".into()];
    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    m.unmount();
    for r in &m.replicas {
        let out = Command::new("umount").arg(r).output().unwrap();
        assert!(out.status.success());
    }
}

#[test]
fn a_replaced_daemon_does_not_remove_its_successors_socket() {
    let t = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = t.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };
    let (a, b, mnt) = (d("a"), d("b"), d("mnt"));
    let mount = |r: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["mount"])
            .arg(r)
            .arg(&mnt)
            .arg("--log-file")
            .arg(t.path().join("log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        daemon_pid(&mnt).unwrap()
    };
    let _guard = Unmount(mnt.clone());
    let old = mount(&a);
    // A file held open keeps the old daemon serving after a lazy unmount.
    let held = fs::File::create(mnt.join("held")).unwrap();
    let out = Command::new("umount").arg("-l").arg(&mnt).output().unwrap();
    assert!(out.status.success());
    let new = mount(&b);
    drop(held);
    wait_until("the old daemon to exit", || !alive(old));
    let out = mirrorfs(&[OsStr::new("health"), mnt.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = mirrorfs(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(out.status.success());
    assert!(!alive(new));
}
