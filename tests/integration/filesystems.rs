//! Replicas on different kinds of local filesystem: ext4 (the test's temporary directory)
//! beside xfs on a loop device. Inode numbers, directory order, timestamps, xattr and
//! hole handling differ between them; the mirror must hide all of it.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::process::Command;

use crate::common::{Mirror, cstr, last_errno, renameat2, run};

#[test]
fn replicas_on_ext4_and_xfs_end_identical() {
    let m = Mirror::setup(2).filesystem(1, "xfs").mount();
    let st = m.status();
    for i in 0..2 {
        assert_eq!(
            st["daemon"]["replicas"][i]["lacks"],
            serde_json::json!([]),
            "{st}"
        );
    }

    fs::create_dir_all(m.path("d/e")).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("d/big"), &data).unwrap();
    // A sparse file: a hole, then data past it.
    let f = fs::File::create(m.path("d/sparse")).unwrap();
    f.write_all_at(b"tail", 5 << 20).unwrap();
    drop(f);
    for i in 0..200 {
        fs::write(m.path(&format!("d/e/{i}")), format!("{i}")).unwrap();
    }
    fs::write(m.path("a"), b"a").unwrap();
    fs::write(m.path("b"), b"b").unwrap();
    assert_eq!(renameat2(&m, "a", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(renameat2(&m, "b", "c", libc::RENAME_NOREPLACE), 0);
    fs::hard_link(m.path("c"), m.path("d/c.link")).unwrap();
    symlink("../c", m.path("d/link")).unwrap();
    let fifo = cstr(&m.path("d/fifo"));
    // SAFETY: a valid path.
    assert_eq!(
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) },
        0,
        "{}",
        last_errno()
    );
    fs::set_permissions(m.path("d/big"), fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::chown(m.path("c"), Some(4321), Some(8765)).unwrap();
    run(Command::new("setfattr")
        .args(["-n", "user.colour", "-v", "blue"])
        .arg(m.path("d/big")));
    run(Command::new("setfacl")
        .args(["-m", "u:4321:rw"])
        .arg(m.path("c")));
    // xfs's second name for that ACL is not part of the mirror, whichever replica serves.
    let c = cstr(&m.path("c"));
    let mut buf = [0u8; 256];
    // SAFETY: a valid path, name and buffer.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"trusted.SGI_ACL_FILE".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!((n, last_errno()), (-1, libc::ENODATA));
    for i in (0..200).step_by(3) {
        fs::remove_file(m.path(&format!("d/e/{i}"))).unwrap();
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("d/big"))
        .unwrap();
    f.set_len(300_000).unwrap();
    drop(f);

    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(
        fs::read(m.replica(1, "d/sparse")).unwrap().len(),
        (5 << 20) + 4
    );
    let log = m.log();
    assert!(
        !log.contains("out of sync"),
        "nothing fell out of sync: {log}"
    );
}
