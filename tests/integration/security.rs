//! Symlinks planted inside a replica must not let the daemon touch anything outside the
//! replica roots.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use crate::common::Mirror;

#[test]
fn a_planted_directory_symlink_on_one_replica_leads_nowhere() {
    let m = Mirror::new(2);
    let outside = m.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/secret"), b"mirror").unwrap();
    // Replace the directory on replica 1 with a symlink to the outside directory.
    fs::remove_dir_all(m.replica(1, "dir")).unwrap();
    symlink(&outside, m.replica(1, "dir")).unwrap();

    fs::write(m.path("dir/secret"), b"overwritten").unwrap();
    fs::write(m.path("dir/new"), b"new").unwrap();
    fs::remove_file(m.path("dir/new")).unwrap();
    let _ = fs::set_permissions(m.path("dir/secret"), fs::Permissions::from_mode(0o600));
    assert_eq!(fs::read(m.path("dir/secret")).unwrap(), b"overwritten");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"do not touch");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(
        fs::metadata(outside.join("secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

#[test]
fn a_planted_file_symlink_is_never_followed() {
    let m = Mirror::new(3);
    let target = m.dir.path().join("target");
    fs::write(&target, b"outside").unwrap();
    fs::write(m.path("f"), b"inside").unwrap();
    for i in 1..3 {
        fs::remove_file(m.replica(i, "f")).unwrap();
        symlink(&target, m.replica(i, "f")).unwrap();
    }
    fs::write(m.path("f"), b"changed").unwrap();
    std::os::unix::fs::chown(m.path("f"), Some(7), Some(7)).unwrap();
    let _ = fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600));
    let c = std::ffi::CString::new(m.path("f").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.x").unwrap();
    // SAFETY: valid strings.
    unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(fs::read(&target).unwrap(), b"outside");
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(&target).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o644));
    assert_eq!(xattr_count(&target), 0);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"changed");
}

#[test]
fn a_symlink_to_etc_on_a_replica_cannot_reach_etc() {
    let m = Mirror::new(2);
    fs::create_dir(m.path("conf")).unwrap();
    fs::write(m.path("conf/passwd"), b"mirror copy").unwrap();
    fs::remove_dir_all(m.replica(1, "conf")).unwrap();
    symlink("/etc", m.replica(1, "conf")).unwrap();
    let before = fs::read("/etc/passwd").unwrap();
    let before_mtime = fs::metadata("/etc/passwd").unwrap().modified().unwrap();

    assert_eq!(fs::read(m.path("conf/passwd")).unwrap(), b"mirror copy");
    fs::write(m.path("conf/passwd"), b"attacker").unwrap();
    fs::write(m.path("conf/mirrorfs-planted"), b"x").unwrap();
    fs::rename(
        m.path("conf/mirrorfs-planted"),
        m.path("conf/mirrorfs-moved"),
    )
    .unwrap();
    fs::create_dir(m.path("conf/mirrorfs-dir")).unwrap();

    assert_eq!(fs::read("/etc/passwd").unwrap(), before);
    assert_eq!(
        fs::metadata("/etc/passwd").unwrap().modified().unwrap(),
        before_mtime
    );
    for name in ["mirrorfs-planted", "mirrorfs-moved", "mirrorfs-dir"] {
        assert!(
            !std::path::Path::new("/etc").join(name).exists(),
            "{name} in /etc"
        );
    }
    // The replica holding the symlink is marked and not read from for that path.
    let status = m.status();
    assert_eq!(status["daemon"]["replicas"][1]["state"], "degraded");
    assert_eq!(fs::read(m.path("conf/passwd")).unwrap(), b"attacker");
}

fn xattr_count(p: &std::path::Path) -> usize {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut buf = [0u8; 1024];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf[..n.max(0) as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .count()
}

#[test]
fn a_fifo_planted_on_a_replica_neither_hangs_nor_is_opened() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"file").unwrap();
    fs::remove_file(m.replica(1, "f")).unwrap();
    let fifo = std::ffi::CString::new(m.replica(1, "f").to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = m.path("f");
    std::thread::spawn(move || {
        let r = fs::write(&path, b"written");
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("writing through the mount hung on the planted FIFO");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"written");
    assert_eq!(m.status()["daemon"]["replicas"][1]["state"], "degraded");
}
