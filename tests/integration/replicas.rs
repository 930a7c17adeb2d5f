//! `mirrorfs replica fail` and `readmit`: a replica taken out by hand while the mirror
//! serves a write load, kept out across a remount, and brought back by a repair of what it
//! missed alone.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Mirror, mirrorfs};

const MIB: usize = 1 << 20;

/// `mirrorfs replica ACTION [--rejoin] MOUNTPOINT REPLICA`; "rejoin" stands for
/// `split --rejoin`.
fn replica_cmd(m: &Mirror, action: &str, replica: &Path) -> Output {
    let words: &[&str] = match action {
        "rejoin" => &["split", "--rejoin"],
        other => &[other][..],
    };
    let mut args = vec![OsStr::new("replica")];
    args.extend(words.iter().map(OsStr::new));
    args.extend([m.mnt.as_os_str(), replica.as_os_str()]);
    mirrorfs(&args)
}

/// Runs `mirrorfs replica ACTION` and asserts it succeeded.
fn change(m: &Mirror, action: &str, replica: usize) {
    let out = replica_cmd(m, action, &m.replicas[replica]);
    assert!(
        out.status.success(),
        "replica {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `mirrorfs replica ACTION` on `replica`, asserts it was refused with one line
/// containing `why`, and returns that line.
fn refused(m: &Mirror, action: &str, replica: &Path, why: &str) -> String {
    let out = replica_cmd(m, action, replica);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{action} was not refused: {err}"
    );
    assert!(err.contains(why), "{action}: {err:?} does not say {why:?}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err:?}");
    err
}

/// Writes `bytes` at `offset` of `rel` through the mount, and syncs it.
fn overwrite(m: &Mirror, rel: &str, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path(rel))
        .unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

fn health_code(m: &Mirror) -> Option<i32> {
    mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()])
        .status
        .code()
}

/// The status of each member of the set (and of those that left it), in order, and
/// whether each has a join time.
fn members(m: &Mirror) -> Vec<(String, bool)> {
    m.status()["daemon"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mb| {
            (
                mb["status"].as_str().unwrap().to_string(),
                mb["joined"].is_u64(),
            )
        })
        .collect()
}

fn replica_status(m: &Mirror, i: usize) -> serde_json::Value {
    m.status()["daemon"]["replicas"][i].clone()
}

/// A writer that appends numbered lines to `log` through the mount until stopped, and
/// fails the test if any write fails.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(m: &Mirror) -> Writer {
        let path = m.path("log");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file = fs::File::create(&path).unwrap();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                // One write(2) per record: a copy taken between two holds whole records.
                file.write_all(format!("record {n:08}\n").as_bytes())
                    .expect("a write through the mount failed");
                n += 1;
                if n.is_multiple_of(64) {
                    file.sync_data().expect("an fsync through the mount failed");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            file.sync_all().unwrap();
            n
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer; returns how many records it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_replica_taken_out_under_load_misses_writes_and_is_repaired_by_range() {
    let m = Mirror::new(2);
    let size = 32 * MIB;
    fs::write(m.path("big"), vec![1u8; size]).unwrap();
    m.wait_in_sync();
    let writer = Writer::start(&m);
    std::thread::sleep(Duration::from_millis(200));

    change(&m, "fail", 1);
    let st = replica_status(&m, 1);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["failure"]["by_hand"], true, "{st}");
    assert_eq!(
        health_code(&m),
        Some(1),
        "health is WARNING while a replica is out"
    );
    let taken = ("taken-out".to_string(), true);
    assert_eq!(members(&m), [("member".to_string(), true), taken]);

    // A write while it is out reaches replica 0 alone.
    overwrite(&m, "big", 10 * MIB as u64, &vec![2u8; MIB]);
    let mut chunk = vec![0u8; MIB];
    let held = fs::File::open(m.replica(1, "big")).unwrap();
    held.read_exact_at(&mut chunk, 10 * MIB as u64).unwrap();
    assert!(
        chunk.iter().all(|&b| b == 1),
        "a replica taken out was written"
    );
    std::thread::sleep(Duration::from_millis(200));

    change(&m, "readmit", 1);
    m.wait_in_sync();
    let records = writer.stop();
    assert!(records > 0);
    m.wait_in_sync();
    m.assert_in_sync();
    let lines = fs::read_to_string(m.replica(1, "log")).unwrap();
    assert_eq!(lines.lines().count() as u64, records);
    assert_eq!(
        fs::read(m.replica(1, "big")).unwrap()[10 * MIB..11 * MIB],
        vec![2u8; MIB][..]
    );
    // Only what it missed was copied: the changed chunk of `big` and the log's chunks
    // (races with the writer may add a few), not the whole file.
    let repaired = m.status()["daemon"]["repair"]["bytes_repaired"]
        .as_u64()
        .unwrap();
    let log = fs::metadata(m.path("log")).unwrap().len();
    assert!(
        repaired > 0 && repaired < (size / 2) as u64 + log,
        "repair copied {repaired} bytes for 1 MiB of a {size}-byte file and a {log}-byte log"
    );
}

#[test]
fn a_replica_taken_out_stays_out_across_a_remount_until_readmitted() {
    let mut m = Mirror::new(2);
    fs::write(m.path("before"), b"1").unwrap();
    change(&m, "fail", 1);
    fs::write(m.path("during"), b"2").unwrap();
    m.unmount();
    m.mount();
    let st = replica_status(&m, 1);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["failure"]["by_hand"], true, "{st}");
    fs::write(m.path("after"), b"3").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!m.replica(1, "during").exists() && !m.replica(1, "after").exists());
    change(&m, "readmit", 1);
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, "after")).unwrap(), b"3");
}

#[test]
fn replica_changes_that_cannot_be_made_are_refused_and_change_nothing() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"1").unwrap();
    let other = m.dir.path().join("elsewhere");
    fs::create_dir(&other).unwrap();
    refused(&m, "fail", &other, "is not a replica of this mirror");
    refused(&m, "readmit", &m.replicas[0], "it is not failed");
    change(&m, "fail", 1);
    refused(&m, "fail", &m.replicas[1], "taken out already");
    refused(&m, "fail", &m.replicas[0], "the only replica in sync");
    assert_eq!(replica_status(&m, 0)["state"], "in-sync");
    // Not a mirror.
    let out = mirrorfs(&[
        OsStr::new("replica"),
        OsStr::new("fail"),
        other.as_os_str(),
        m.replicas[1].as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a mirrorfs mount"));
    // Not root.
    let out = crate::common::as_nobody(
        m.dir.path(),
        &format!(
            "{} replica readmit {} {}",
            crate::common::BIN,
            m.mnt.display(),
            m.replicas[1].display()
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only root"));
    assert_eq!(replica_status(&m, 1)["state"], "failed");
    change(&m, "readmit", 1);
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_crash_while_a_replica_is_out_leaves_it_out_and_trusted_for_nothing_it_missed() {
    let mut m = Mirror::new(2);
    fs::write(m.path("f"), vec![1u8; MIB]).unwrap();
    m.wait_in_sync();
    change(&m, "fail", 1);
    overwrite(&m, "f", 4096, b"changed while out");
    fs::write(m.path("new"), b"made while out").unwrap();
    m.kill_daemon();
    m.mount();
    let st = replica_status(&m, 1);
    assert_eq!(st["state"], "failed", "{st}");
    // Nothing is read from it: the mount shows what replica 0 holds.
    assert_eq!(
        &fs::read(m.path("f")).unwrap()[4096..4113],
        b"changed while out"
    );
    assert!(!m.replica(1, "new").exists());
    change(&m, "readmit", 1);
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_replica_removed_under_load_leaves_with_its_files_and_is_no_member() {
    let mut m = Mirror::new(3);
    fs::write(m.path("before"), b"kept").unwrap();
    m.wait_in_sync();
    let writer = Writer::start(&m);
    std::thread::sleep(Duration::from_millis(200));
    change(&m, "remove", 2);
    let gone = m.replicas.pop().unwrap();
    let statuses: Vec<String> = members(&m).into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses, ["member", "member", "removed"]);
    fs::write(m.path("after"), b"not on the removed one").unwrap();
    let records = writer.stop();
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(health_code(&m), Some(0), "the mirror is whole without it");
    assert_eq!(
        m.status()["daemon"]["replicas"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        fs::read_to_string(m.replica(1, "log"))
            .unwrap()
            .lines()
            .count() as u64,
        records
    );
    // Its files stay; it is no member of any mirror, and no longer locked.
    assert_eq!(fs::read(gone.join("before")).unwrap(), b"kept");
    assert!(!gone.join("after").exists());
    assert!(!gone.join(".mirrorfs/state.json").exists());
    refused(&m, "remove", &gone, "is not a replica of this mirror");
    let fresh = m.dir.path().join("fresh");
    let other_mnt = m.dir.path().join("other");
    fs::create_dir(&fresh).unwrap();
    fs::create_dir(&other_mnt).unwrap();
    let mount_other = |init: bool| {
        let mut args = vec![
            OsStr::new("mount"),
            gone.as_os_str(),
            fresh.as_os_str(),
            other_mnt.as_os_str(),
        ];
        if init {
            args.push(OsStr::new("--init"));
        }
        mirrorfs(&args)
    };
    let out = mount_other(false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"));
    let out = mount_other(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _other = crate::common::Unmount(other_mnt.clone());
    assert_eq!(fs::read(other_mnt.join("before")).unwrap(), b"kept");
    let out = mirrorfs(&[OsStr::new("umount"), other_mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The two left are the whole mirror: mounted again with them alone, it is in sync.
    m.unmount();
    m.mount();
    assert_eq!(health_code(&m), Some(0));
    m.assert_in_sync();
}

#[test]
fn removing_the_last_replica_in_sync_is_refused() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"1").unwrap();
    change(&m, "fail", 1);
    refused(&m, "remove", &m.replicas[0], "the only replica in sync");
    assert_eq!(replica_status(&m, 0)["state"], "in-sync");
    // A failed replica may go, though: the one in sync stays.
    change(&m, "remove", 1);
    assert_eq!(health_code(&m), Some(0));
    fs::write(m.path("g"), b"2").unwrap();
    assert!(!m.replica(1, "g").exists());
}

#[test]
fn a_split_copy_holds_the_mirror_as_of_one_instant_and_rejoins_by_range() {
    let m = Mirror::new(3);
    fs::write(m.path("big"), vec![1u8; 16 * MIB]).unwrap();
    m.wait_in_sync();
    let writer = Writer::start(&m);
    std::thread::sleep(Duration::from_millis(300));
    change(&m, "split", 2);
    std::thread::sleep(Duration::from_millis(300));
    overwrite(&m, "big", MIB as u64, b"after the split");
    let records = writer.stop();
    // The copy stops between two records; the mirror went on.
    let copy = fs::read_to_string(m.replica(2, "log")).unwrap();
    let all = fs::read_to_string(m.path("log")).unwrap();
    let kept = copy.lines().count() as u64;
    assert!(
        copy.ends_with('\n') && all.starts_with(&copy),
        "not a prefix"
    );
    assert!(
        kept > 0 && kept < records,
        "copy {kept} of {records} records"
    );
    assert_eq!(fs::read(m.replica(2, "big")).unwrap(), vec![1u8; 16 * MIB]);
    let st = replica_status(&m, 2);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(members(&m)[2].0, "split");
    // It is a copy, not this mirror: mounted alone it needs --init.
    let other = m.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = mirrorfs(&[
        OsStr::new("mount"),
        m.replicas[2].as_os_str(),
        other.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("split off"));
    refused(&m, "readmit", &m.replicas[2], "split --rejoin");
    let before = m.status()["daemon"]["repair"]["bytes_repaired"]
        .as_u64()
        .unwrap();
    change(&m, "rejoin", 2);
    m.wait_in_sync();
    m.assert_in_sync();
    // By range: the log's tail and one chunk of big, not big whole.
    let repaired = m.status()["daemon"]["repair"]["bytes_repaired"]
        .as_u64()
        .unwrap()
        - before;
    let log = fs::metadata(m.path("log")).unwrap().len();
    assert!(
        repaired < (8 * MIB) as u64 + log,
        "rejoin copied {repaired} bytes for one chunk of a 16 MiB file and a {log}-byte log"
    );
}

#[test]
fn a_split_copy_changed_since_rejoins_by_a_full_comparison() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"mirror").unwrap();
    change(&m, "split", 1);
    fs::write(m.replica(1, "f"), b"edited in the copy").unwrap();
    fs::write(m.replica(1, "stray"), b"made in the copy").unwrap();
    let out = replica_cmd(&m, "rejoin", &m.replicas[1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("compared in full"));
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, "f")).unwrap(), b"mirror");
    assert!(!m.replica(1, "stray").exists());
}

#[test]
fn a_crash_after_a_split_or_a_removal_leaves_a_mirror_that_assembles_and_converges() {
    let mut m = Mirror::new(3);
    fs::write(m.path("f"), vec![1u8; MIB]).unwrap();
    m.wait_in_sync();
    change(&m, "split", 2);
    change(&m, "remove", 1);
    overwrite(&m, "f", 0, b"after both");
    m.kill_daemon();
    // The removed replica is no member: given again, it is refused.
    let removed = m.replicas.remove(1);
    let mut with_removed = m.replicas.clone();
    with_removed.push(removed.clone());
    let out = std::process::Command::new(crate::common::BIN)
        .arg("mount")
        .args(&with_removed)
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"));
    // Without it, the split copy stays out, then rejoins by range.
    m.mount();
    let st = replica_status(&m, 1);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(&fs::read(m.path("f")).unwrap()[..10], b"after both");
    assert_eq!(fs::read(m.replica(1, "f")).unwrap(), vec![1u8; MIB]);
    change(&m, "rejoin", 1);
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn two_changes_at_once_never_leave_the_mirror_without_a_replica_in_sync() {
    let m = Mirror::new(2);
    fs::write(m.path("f"), b"1").unwrap();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let both: Vec<_> = (0..2)
            .map(|i| {
                let m = &m;
                s.spawn(move || replica_cmd(m, "fail", &m.replicas[i]))
            })
            .collect();
        both.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let succeeded = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(succeeded, 1, "both or neither taken out");
    assert_eq!(health_code(&m), Some(1));
    assert_eq!(fs::read(m.path("f")).unwrap(), b"1");
}
