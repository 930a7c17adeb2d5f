//! `mirrorfs mount` refuses bad input with one line and a non-zero exit, and changes
//! nothing when it does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::common::{Mirror, mirrorfs};

/// Every path under `root` (the state a refusal must leave untouched).
fn listing(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn refused(root: &Path, args: &[&OsStr], expected: &str) {
    let before = listing(root);
    let mut full: Vec<&OsStr> = vec![OsStr::new("mount")];
    full.extend_from_slice(args);
    let out = mirrorfs(&full);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Accepted by mistake: do not leave the mount behind.
        for a in args {
            let _ = mirrorfs(&[OsStr::new("umount"), a]);
        }
        panic!("{args:?} was accepted");
    }
    assert!(
        err.contains(expected),
        "{args:?}: expected {expected:?} in {err:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("mirrorfs: "), "{err:?}");
    assert_eq!(listing(root), before, "{args:?} changed the directories");
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let d = |name: &str| {
        let p = root.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (a, b, mnt) = (d("a"), d("b"), d("mnt"));
    let file = root.join("file");
    std::fs::write(&file, b"x").unwrap();
    let inner = d("a/inner");
    std::os::unix::fs::symlink(&a, root.join("alias")).unwrap();
    let o = |p: &Path| p.as_os_str().to_owned();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec![o(&mnt)], "no replica directory given"),
        (
            vec![o(&root.join("missing")), o(&b), o(&mnt)],
            "does not exist",
        ),
        (vec![o(&a), o(&file), o(&mnt)], "not a directory"),
        (vec![o(&a), o(&a), o(&mnt)], "given twice"),
        (vec![o(&a), o(&root.join("alias")), o(&mnt)], "given twice"),
        (vec![o(&a), o(&inner), o(&mnt)], "is inside replica"),
        (vec![o(&a), o(&b), o(&inner)], "mount point"),
        (vec![o(&b), o(&mnt), o(root)], "inside the mount point"),
        (vec![o(&a), o(&b), o(&root.join("nomnt"))], "does not exist"),
        (vec![o(&a), o(&b), o(&file)], "not a directory"),
        (
            vec![o(&a), o(&b), o(&mnt), "-o".into(), "bogus".into()],
            "unknown mount option",
        ),
        (
            vec![OsStr::from_bytes(b"::").to_owned(), o(&mnt)],
            "empty entry",
        ),
        (
            vec![o(&a), o(&b), o(&mnt), "--cache-ttl".into(), "1e300".into()],
            "cache_ttl must be",
        ),
        (
            vec![
                o(&a),
                o(&b),
                o(&mnt),
                "--settle-interval".into(),
                "0".into(),
            ],
            "settle_interval must be",
        ),
        (
            vec![
                o(&a),
                o(&b),
                o(&mnt),
                "-o".into(),
                "settle_interval=601".into(),
            ],
            "settle_interval must be",
        ),
        (
            vec![
                o(&a),
                o(&b),
                o(&mnt),
                "--log-file".into(),
                "/proc/no/such/log".into(),
            ],
            "cannot open log file",
        ),
    ];
    for (args, expected) in &cases {
        let refs: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        refused(root, &refs, expected);
    }
}

#[test]
fn a_mount_point_that_is_already_mounted_is_refused() {
    let m = Mirror::new(2);
    let other = tempfile::tempdir().unwrap();
    let r = other.path().join("r");
    std::fs::create_dir(&r).unwrap();
    refused(
        other.path(),
        &[r.as_os_str(), m.mnt.as_os_str()],
        "already mounted",
    );
}

#[test]
fn a_replica_in_use_by_another_mount_is_refused() {
    let m = Mirror::new(2);
    let other = tempfile::tempdir().unwrap();
    let mnt = other.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    refused(
        other.path(),
        &[m.replicas[0].as_os_str(), mnt.as_os_str()],
        "in use by another mirrorfs mount",
    );
}

#[test]
fn help_explains_every_option() {
    let out = mirrorfs(&[OsStr::new("--help")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["mount", "umount", "health", "repair", "replica"] {
        assert!(text.contains(word), "{word} missing from --help");
    }
    let out = mirrorfs(&[OsStr::new("mount"), OsStr::new("--help")]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--foreground",
        "-o",
        "allow_other",
        "default_permissions",
        "--threads",
        "--cache-ttl",
        "--settle-interval",
        "--log-file",
        "--log-level",
        "dirA:dirB:dirC",
    ] {
        assert!(text.contains(word), "{word} missing from mount --help");
    }
}
