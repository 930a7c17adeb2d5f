//! Which replicas form a mirror: metadata that identifies each replica and its set,
//! `--init` for directories that already hold data, replicas of another set, replicas left
//! behind, and split brains refused until `mirrorfs repair --source` picks the data to keep.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{BIN, Unmount, mirrorfs};

/// Replica directories and a mount point in a temporary directory; mounts it makes are
/// unmounted when it is dropped.
struct Bench {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    _guard: Unmount,
}

impl Bench {
    fn new(replicas: &[&str]) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        for r in replicas {
            fs::create_dir(dir.path().join(r)).unwrap();
        }
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Bench {
            _guard: Unmount(mnt.clone()),
            dir,
            mnt,
        }
    }

    fn r(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mount(&self, replicas: &[&str], extra: &[&str]) -> Output {
        Command::new(BIN)
            .arg("mount")
            .args(replicas.iter().map(|r| self.r(r)))
            .arg(&self.mnt)
            .arg("--log-file")
            .arg(self.dir.path().join("log"))
            .args(extra)
            .output()
            .unwrap()
    }

    fn mounted(&self, replicas: &[&str], extra: &[&str]) {
        let out = self.mount(replicas, extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn unmount(&self) {
        let out = mirrorfs(&[OsStr::new("umount"), self.mnt.as_os_str()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn health(&self) -> serde_json::Value {
        let out = mirrorfs(&[
            OsStr::new("health"),
            OsStr::new("--json"),
            self.mnt.as_os_str(),
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn replica_status(&self, i: usize) -> serde_json::Value {
        self.health()["daemon"]["replicas"][i].clone()
    }

    /// Waits until every replica is in sync.
    fn wait_in_sync(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.health()["exit_code"] != 0 {
            assert!(std::time::Instant::now() < deadline, "{}", self.health());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn has_metadata(p: &Path) -> bool {
    p.join(".mirrorfs").exists()
}

#[test]
fn empty_directories_become_a_mirror_and_remember_it() {
    let b = Bench::new(&["a", "b"]);
    b.mounted(&["a", "b"], &[]);
    fs::write(b.mnt.join("f"), b"x").unwrap();
    b.unmount();
    let state = |r: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(b.r(r).join(".mirrorfs/state.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (state("a"), state("b"));
    assert_eq!(sa["set"], sb["set"]);
    assert_ne!(sa["replica"], sb["replica"]);
    assert_eq!(sa["generation"], sb["generation"]);
    assert_eq!(
        (sa["clean"].as_bool(), sb["clean"].as_bool()),
        (Some(true), Some(true))
    );
    b.mounted(&["a", "b"], &[]);
    for i in 0..2 {
        assert_eq!(b.replica_status(i)["state"], "in-sync");
    }
}

#[test]
fn a_directory_holding_data_becomes_a_replica_only_with_init() {
    let b = Bench::new(&["data", "empty"]);
    fs::write(b.r("data").join("precious"), b"keep me").unwrap();
    let out = b.mount(&["data", "empty"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--init"), "{}", stderr(&out));
    assert!(!has_metadata(&b.r("data")) && !has_metadata(&b.r("empty")));

    b.mounted(&["data", "empty"], &["--init"]);
    assert_eq!(fs::read(b.mnt.join("precious")).unwrap(), b"keep me");
    b.wait_in_sync();
    assert_eq!(fs::read(b.r("empty").join("precious")).unwrap(), b"keep me");
}

#[test]
fn several_directories_holding_data_need_a_named_source() {
    let b = Bench::new(&["x", "y"]);
    fs::write(b.r("x").join("f"), b"x").unwrap();
    fs::write(b.r("y").join("f"), b"y").unwrap();
    let out = b.mount(&["x", "y"], &["--init"]);
    assert!(stderr(&out).contains("--source"), "{}", stderr(&out));
    assert!(!has_metadata(&b.r("x")));
    let y = b.r("y");
    b.mounted(&["x", "y"], &["--init", "--source", y.to_str().unwrap()]);
    assert_eq!(fs::read(b.mnt.join("f")).unwrap(), b"y");
    b.wait_in_sync();
    assert_eq!(fs::read(b.r("x").join("f")).unwrap(), b"y");
}

#[test]
fn a_replica_of_another_mirror_is_refused() {
    let b = Bench::new(&["a", "b", "c"]);
    b.mounted(&["a"], &[]);
    b.unmount();
    b.mounted(&["b"], &[]);
    b.unmount();
    let out = b.mount(&["a", "b"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another mirror set"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_replica_left_out_is_known_to_be_behind() {
    let b = Bench::new(&["a", "b"]);
    b.mounted(&["a", "b"], &[]);
    fs::write(b.mnt.join("f"), b"old").unwrap();
    b.unmount();
    // Mounted without b, the mirror takes a write b misses.
    b.mounted(&["a"], &[]);
    fs::write(b.mnt.join("f"), b"new").unwrap();
    b.unmount();
    // Even as primary, a replica that is behind is not read; it is brought up to date.
    b.mounted(&["b", "a"], &[]);
    assert_eq!(fs::read(b.mnt.join("f")).unwrap(), b"new");
    b.wait_in_sync();
    assert_eq!(fs::read(b.r("b").join("f")).unwrap(), b"new");
}

#[test]
fn a_split_brain_is_refused_until_a_source_is_chosen() {
    let b = Bench::new(&["a", "b"]);
    b.mounted(&["a", "b"], &[]);
    fs::write(b.mnt.join("f"), b"common").unwrap();
    b.unmount();
    b.mounted(&["a"], &[]);
    fs::write(b.mnt.join("f"), b"written on a").unwrap();
    b.unmount();
    b.mounted(&["b"], &[]);
    fs::write(b.mnt.join("f"), b"written on b").unwrap();
    b.unmount();

    let out = b.mount(&["a", "b"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("split brain"), "{err}");
    assert!(err.contains("mirrorfs repair --source"), "{err}");
    assert!(err.contains(b.r("a").to_str().unwrap()) && err.contains(b.r("b").to_str().unwrap()));
    assert_eq!(err.trim_end().lines().count(), 1);

    let out = mirrorfs(&[
        OsStr::new("repair"),
        OsStr::new("--source"),
        b.r("b").as_os_str(),
        b.r("a").as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.mounted(&["a", "b"], &[]);
    assert_eq!(fs::read(b.mnt.join("f")).unwrap(), b"written on b");
    assert_eq!(b.replica_status(1)["state"], "in-sync");
    b.wait_in_sync();
    assert_eq!(fs::read(b.r("a").join("f")).unwrap(), b"written on b");
    b.unmount();
    // In sync now: a plain mount takes both.
    b.mounted(&["a", "b"], &[]);
    assert_eq!(b.health()["exit_code"], 0);
}
