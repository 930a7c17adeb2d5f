//! The errors a local filesystem gives, given through the mount.

use std::fs::{self, File, OpenOptions};
use std::io::Write;

use crate::common::{Mirror, cstr, last_errno};

fn errno<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn namespace_errors_match_a_local_filesystem() {
    let m = Mirror::new(3);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    fs::write(m.path("file"), b"x").unwrap();
    assert_eq!(errno(fs::metadata(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::read(m.path("missing/deeper"))), libc::ENOENT);
    assert_eq!(errno(fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(m.path("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::read_dir(m.path("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::read(m.path("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(File::create(m.path("d"))), libc::EISDIR);
    assert_eq!(
        errno(fs::rename(m.path("d"), m.path("file"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(fs::rename(m.path("file"), m.path("d"))), libc::EISDIR);
    assert_eq!(
        errno(fs::rename(m.path("d"), m.path("d/sub"))),
        libc::EINVAL
    );
    let long = "n".repeat(256);
    assert_eq!(errno(File::create(m.path(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::metadata(m.path(&long))), libc::ENAMETOOLONG);
    std::os::unix::fs::symlink("loop2", m.path("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", m.path("loop2")).unwrap();
    assert_eq!(errno(fs::read(m.path("loop1"))), libc::ELOOP);
    assert_eq!(
        errno(fs::hard_link(m.path("d"), m.path("dlink"))),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::hard_link(m.path("file"), m.path("d/f"))),
        libc::EEXIST
    );
    m.assert_in_sync();
}

#[test]
fn renames_inside_the_mount_never_fail_with_exdev() {
    let m = Mirror::new(2);
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::create_dir_all(m.path("x/y")).unwrap();
    fs::write(m.path("a/b/c/f"), b"f").unwrap();
    fs::rename(m.path("a/b/c/f"), m.path("x/y/f")).unwrap();
    fs::rename(m.path("a/b"), m.path("x/y/b")).unwrap();
    fs::rename(m.path("x"), m.path("a/x")).unwrap();
    assert_eq!(fs::read(m.path("a/x/y/f")).unwrap(), b"f");
    assert!(m.path("a/x/y/b/c").is_dir());
    m.assert_in_sync();
}

#[test]
fn io_errors_match_a_local_filesystem() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"x").unwrap();
    let mut ro = File::open(m.path("f")).unwrap();
    assert_eq!(errno(ro.write_all(b"y")), libc::EBADF);
    let wo = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(errno(std::io::Read::read(&mut &wo, &mut buf)), libc::EBADF);
    let p = cstr(&m.path("f"));
    // SAFETY: valid path.
    unsafe {
        assert_eq!(libc::truncate(p.as_ptr(), -1), -1);
        assert_eq!(last_errno(), libc::EINVAL);
    }
}
