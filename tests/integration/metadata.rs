//! Attributes through the mount: chmod, chown, utimens, xattrs, POSIX ACLs, statfs, and
//! timestamps that agree across replicas.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::common::{Mirror, cstr, last_errno, ts, utimens};

#[test]
fn chmod_chown_and_utimens_reach_every_replica() {
    let m = Mirror::new(3);
    fs::write(m.path("f"), b"x").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    std::os::unix::fs::chown(m.path("f"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(m.path("d"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::lchown(m.path("l"), Some(42), Some(43)).unwrap();
    utimens(
        &m.path("f"),
        [ts(1_000_000, 5), ts(2_000_000, 123_456_789)],
        0,
    );
    utimens(
        &m.path("l"),
        [ts(3, 0), ts(4, 0)],
        libc::AT_SYMLINK_NOFOLLOW,
    );
    // UTIME_OMIT keeps a time, UTIME_NOW gives every replica one and the same time.
    utimens(
        &m.path("d"),
        [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)],
        0,
    );
    let f = fs::metadata(m.path("f")).unwrap();
    assert_eq!(f.mode() & 0o7777, 0o4751);
    assert_eq!((f.uid(), f.gid()), (1234, 5678));
    assert_eq!((f.mtime(), f.mtime_nsec()), (2_000_000, 123_456_789));
    let l = fs::symlink_metadata(m.path("l")).unwrap();
    assert_eq!((l.uid(), l.gid(), l.mtime()), (42, 43, 4));
    let times: Vec<_> = (0..3)
        .map(|i| {
            let d = fs::metadata(m.replica(i, "d")).unwrap();
            (d.atime(), d.atime_nsec())
        })
        .collect();
    assert!(times.iter().all(|t| *t == times[0]), "{times:?}");
    m.assert_in_sync();
}

#[test]
fn written_files_end_with_one_mtime_on_every_replica() {
    let m = Mirror::new(3);
    let mut f = File::create(m.path("w")).unwrap();
    for _ in 0..20 {
        f.write_all(&[1u8; 10_000]).unwrap();
    }
    drop(f);
    let mtimes: Vec<_> = (0..3)
        .map(|i| {
            let md = fs::metadata(m.replica(i, "w")).unwrap();
            (md.mtime(), md.mtime_nsec())
        })
        .collect();
    assert!(mtimes.iter().all(|t| *t == mtimes[0]), "{mtimes:?}");
    let through = fs::metadata(m.path("w")).unwrap();
    assert_eq!((through.mtime(), through.mtime_nsec()), mtimes[0]);
}

#[test]
fn truncate_sets_one_mtime_everywhere() {
    let m = Mirror::new(2);
    fs::write(m.path("t"), b"0123456789").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let p = cstr(&m.path("t"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::truncate(p.as_ptr(), 3) }, 0);
    m.assert_in_sync();
}

#[test]
fn xattrs_are_set_listed_and_removed_everywhere() {
    let m = Mirror::with_args(3, &["-o", "allow_other"]);
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.path("f"), b"").unwrap();
    let p = cstr(&m.path("f"));
    let set = |name: &str, value: &[u8], flags: i32| -> i32 {
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid strings and value.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        if r == 0 { 0 } else { last_errno() }
    };
    assert_eq!(set("user.one", b"1", 0), 0);
    assert_eq!(set("user.two", &[0u8, 255, 7], libc::XATTR_CREATE), 0);
    assert_eq!(set("user.two", b"x", libc::XATTR_CREATE), libc::EEXIST);
    assert_eq!(set("user.none", b"x", libc::XATTR_REPLACE), libc::ENODATA);
    assert_eq!(set("user.one", &vec![9u8; 4000], libc::XATTR_REPLACE), 0);
    assert_eq!(set("trusted.root", b"t", 0), 0);
    m.assert_in_sync();

    // Size query, too-small buffer, and a missing name.
    let name = std::ffi::CString::new("user.one").unwrap();
    let mut buf = [0u8; 10];
    // SAFETY: valid strings and buffers.
    unsafe {
        assert_eq!(
            libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0),
            4000
        );
        assert_eq!(
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len()
            ),
            -1
        );
        assert_eq!(last_errno(), libc::ERANGE);
        let missing = std::ffi::CString::new("user.missing").unwrap();
        assert_eq!(
            libc::getxattr(
                p.as_ptr(),
                missing.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len()
            ),
            -1
        );
        assert_eq!(last_errno(), libc::ENODATA);
        let two = std::ffi::CString::new("user.two").unwrap();
        assert_eq!(libc::removexattr(p.as_ptr(), two.as_ptr()), 0);
        assert_eq!(libc::removexattr(p.as_ptr(), two.as_ptr()), -1);
        assert_eq!(last_errno(), libc::ENODATA);
    }
    m.assert_in_sync();
    // Non-root callers do not see trusted.* names; root does.
    let out = crate::common::as_nobody(&m.mnt, "getfattr -d -m - f");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("user.one") && !text.contains("trusted."),
        "{text}"
    );
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-"])
        .arg(m.path("f"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("trusted.root"));
}

#[test]
fn posix_acls_are_stored_and_enforced() {
    let m = Mirror::with_args(2, &["-o", "allow_other"]);
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(m.path("shared/secret"), b"s").unwrap();
    let denied = crate::common::as_nobody(&m.mnt, "cat shared/secret");
    assert!(!denied.status.success());
    let acl = |args: &[&str]| {
        let out = Command::new("setfacl")
            .args(args)
            .output()
            .expect("setfacl (apt: acl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    acl(&["-m", "u:nobody:rx", m.path("shared").to_str().unwrap()]);
    acl(&[
        "-m",
        "u:nobody:r",
        m.path("shared/secret").to_str().unwrap(),
    ]);
    let allowed = crate::common::as_nobody(&m.mnt, "cat shared/secret");
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(allowed.stdout, b"s");
    // A default ACL is inherited by new files, whatever the creator's umask.
    acl(&[
        "-d",
        "-m",
        "u:nobody:rwx",
        m.path("shared").to_str().unwrap(),
    ]);
    File::create(m.path("shared/new")).unwrap();
    let out = Command::new("getfacl")
        .args(["-c", m.path("shared/new").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("user:nobody:rw"));
    m.assert_in_sync();
}

#[test]
fn statfs_reports_the_smallest_replica() {
    let m = Mirror::new(2);
    let mut through: libc::statvfs = unsafe { std::mem::zeroed() };
    let mut direct: libc::statvfs = unsafe { std::mem::zeroed() };
    let (a, b) = (cstr(&m.mnt), cstr(&m.replicas[0]));
    // SAFETY: valid paths and buffers.
    unsafe {
        assert_eq!(libc::statvfs(a.as_ptr(), &mut through), 0);
        assert_eq!(libc::statvfs(b.as_ptr(), &mut direct), 0);
    }
    let bytes = |s: &libc::statvfs| s.f_blocks * s.f_frsize;
    assert_eq!(bytes(&through), bytes(&direct));
    assert!(through.f_bavail > 0);
    assert_eq!(through.f_namemax, 255);
}

#[test]
fn chown_to_the_same_ids_updates_only_the_ctime() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"x").unwrap();
    let before = fs::metadata(m.path("f")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let p = cstr(&m.path("f"));
    // SAFETY: valid path; -1 leaves owner and group alone.
    assert_eq!(unsafe { libc::chown(p.as_ptr(), u32::MAX, u32::MAX) }, 0);
    let after = fs::metadata(m.path("f")).unwrap();
    assert!(
        (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
        "ctime did not move"
    );
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
}

#[test]
fn symlinks_and_special_files_get_one_creation_time_everywhere() {
    let m = Mirror::new(3);
    std::os::unix::fs::symlink("target", m.path("l")).unwrap();
    let fifo = cstr(&m.path("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for name in ["l", "fifo"] {
        let times: Vec<_> = (0..3)
            .map(|i| {
                let md = fs::symlink_metadata(m.replica(i, name)).unwrap();
                (md.mtime(), md.mtime_nsec(), md.atime(), md.atime_nsec())
            })
            .collect();
        assert!(times.iter().all(|t| *t == times[0]), "{name}: {times:?}");
    }
    m.assert_in_sync();
}
