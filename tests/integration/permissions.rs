//! Access for an unprivileged user (uid/gid 65534) through a mount made by root with
//! allow_other: the kernel checks permissions like on a local filesystem, and new files
//! belong to the user who made them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common::{Mirror, as_nobody};

fn mirror() -> Mirror {
    let m = Mirror::with_args(3, &["-o", "allow_other"]);
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("pub")).unwrap();
    fs::set_permissions(m.path("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    m
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn denied(out: &std::process::Output, why: &str) {
    assert!(!out.status.success(), "unexpectedly allowed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(why), "expected {why:?}, got {err:?}");
}

#[test]
fn new_files_belong_to_the_caller_with_its_umask() {
    let m = mirror();
    ok(&as_nobody(
        &m.mnt,
        "echo hi > pub/f && mkdir pub/d && ln -s f pub/l && mkfifo pub/p",
    ));
    ok(&as_nobody(
        &m.mnt,
        "umask 077; echo x > pub/private && mkdir pub/pd",
    ));
    for i in 0..3 {
        let md = |rel: &str| fs::symlink_metadata(m.replica(i, rel)).unwrap();
        for rel in ["pub/f", "pub/d", "pub/l", "pub/p", "pub/private"] {
            assert_eq!(
                (md(rel).uid(), md(rel).gid()),
                (65534, 65534),
                "{rel} on {i}"
            );
        }
        assert_eq!(md("pub/f").mode() & 0o7777, 0o644);
        assert_eq!(md("pub/d").mode() & 0o7777, 0o755);
        assert_eq!(md("pub/p").mode() & 0o7777, 0o644);
        assert_eq!(md("pub/private").mode() & 0o7777, 0o600);
        assert_eq!(md("pub/pd").mode() & 0o7777, 0o700);
    }
    m.assert_in_sync();
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let m = mirror();
    fs::create_dir(m.path("team")).unwrap();
    std::os::unix::fs::chown(m.path("team"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(m.path("team"), fs::Permissions::from_mode(0o2777)).unwrap();
    ok(&as_nobody(&m.mnt, "echo x > team/f && mkdir team/sub"));
    for i in 0..3 {
        let f = fs::metadata(m.replica(i, "team/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (65534, 4242));
        let d = fs::metadata(m.replica(i, "team/sub")).unwrap();
        assert_eq!(d.gid(), 4242);
        assert_ne!(
            d.mode() & libc::S_ISGID,
            0,
            "new directory keeps set-group-ID"
        );
    }
    m.assert_in_sync();
}

#[test]
fn access_is_refused_where_a_local_filesystem_refuses_it() {
    let m = mirror();
    fs::create_dir(m.path("private")).unwrap();
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(m.path("pub/rootfile"), b"root").unwrap();
    fs::set_permissions(m.path("pub/rootfile"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.path("sticky")).unwrap();
    fs::set_permissions(m.path("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.path("sticky/rootfile"), b"r").unwrap();

    denied(&as_nobody(&m.mnt, "ls private"), "Permission denied");
    denied(
        &as_nobody(&m.mnt, "echo x > private/new"),
        "Permission denied",
    );
    denied(
        &as_nobody(&m.mnt, "echo x >> pub/rootfile"),
        "Permission denied",
    );
    denied(
        &as_nobody(&m.mnt, "chmod 777 pub/rootfile"),
        "Operation not permitted",
    );
    denied(
        &as_nobody(&m.mnt, "chown nobody pub/rootfile"),
        "Operation not permitted",
    );
    denied(
        &as_nobody(&m.mnt, "touch -d 2000-01-01 pub/rootfile"),
        "Permission denied",
    );
    denied(
        &as_nobody(&m.mnt, "rm -f sticky/rootfile"),
        "Operation not permitted",
    );
    denied(
        &as_nobody(&m.mnt, "mknod pub/null c 1 3"),
        "Operation not permitted",
    );
    ok(&as_nobody(
        &m.mnt,
        "cat pub/rootfile && touch sticky/mine && rm sticky/mine",
    ));
    // The owner may chmod, and a later chmod by root is seen by the user.
    ok(&as_nobody(
        &m.mnt,
        "touch pub/mine && chmod 600 pub/mine && cat pub/mine",
    ));
    fs::set_permissions(m.path("pub/mine"), fs::Permissions::from_mode(0o000)).unwrap();
    denied(&as_nobody(&m.mnt, "cat pub/mine"), "Permission denied");
    assert_eq!(fs::read(m.path("pub/rootfile")).unwrap(), b"root");
    m.assert_in_sync();
}

#[test]
fn writes_and_truncates_by_a_user_drop_set_id_bits_like_a_local_filesystem() {
    let m = mirror();
    let local = m.dir.path().join("local");
    fs::create_dir(&local).unwrap();
    fs::set_permissions(&local, fs::Permissions::from_mode(0o777)).unwrap();
    // Written, appended to, truncated, and opened with O_TRUNC by the user; `root` by root;
    // `plain` and `mine` have set-group-ID without group execute, which a write keeps
    // only when the writer is in the file's group (of `mine`).
    let files = [
        ("w", 0o6777),
        ("plain", 0o2766),
        ("mine", 0o2766),
        ("t", 0o6777),
        ("o", 0o6777),
        ("root", 0o6777),
    ];
    let modes = |dir: &std::path::Path| -> Vec<u32> {
        files
            .iter()
            .map(|(name, _)| fs::metadata(dir.join(name)).unwrap().mode() & 0o7777)
            .collect()
    };
    for dir in [m.path("pub"), local.clone()] {
        for (name, mode) in files {
            fs::write(dir.join(name), b"data").unwrap();
            if name == "mine" {
                std::os::unix::fs::chown(dir.join(name), None, Some(65534)).unwrap();
            }
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        ok(&as_nobody(
            &dir,
            "echo x >> w && echo x >> plain && echo x >> mine && truncate -s 1 t && : > o",
        ));
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join("root"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
            .unwrap();
    }
    let want = modes(&local);
    assert_eq!(
        want,
        [0o777, 0o766, 0o2766, 0o777, 0o777, 0o6777],
        "local filesystem"
    );
    assert_eq!(modes(&m.path("pub")), want);
    for i in 0..3 {
        assert_eq!(modes(&m.replica(i, "pub")), want, "replica {i}");
    }
    m.assert_in_sync();
}
