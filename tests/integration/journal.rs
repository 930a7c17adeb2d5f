//! The durable record of what a replica missed: repair after a restart touches only what
//! the journal recorded, a large file heals by the chunks that changed, and after a crash
//! only the paths that were in flight are repaired.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Mirror, remount, renameat2};

/// Makes something with `make` (given the attempt number; it returns the path made)
/// and kills the daemon, until the kill comes before the settler voids the intents of
/// what was made and `covered` (given the journal and the path) holds. Returns the path
/// and how many attempts were made before it.
fn kill_while_in_flight(
    m: &mut Mirror,
    make: impl Fn(&Mirror, usize) -> String,
    covered: impl Fn(&str, &str) -> bool,
) -> (String, u64) {
    for attempt in 0..10 {
        let made = make(m, attempt);
        m.kill_daemon();
        let journal = fs::read_to_string(m.replica(0, ".mirrorfs/journal")).unwrap();
        let last = journal.lines().last().unwrap_or_default();
        if !last.contains(r#""op":"settled""#) && covered(&journal, &made) {
            return (made, attempt as u64);
        }
        m.mount();
    }
    panic!("every attempt was settled before the kill");
}

/// Overwrites 100 bytes of `path` at `at`, keeping its size and times: what a crash
/// between two replicas' writes can leave.
fn scribble(path: &std::path::Path, at: u64) {
    let modified = fs::metadata(path).unwrap().modified().unwrap();
    let mut f = fs::File::options().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[0xee; 100]).unwrap();
    f.set_modified(modified).unwrap();
}

/// Mounts again after a kill and waits until repair has brought every replica in sync,
/// from the journal alone (no replica compared in full).
fn repaired_from_the_journal(m: &mut Mirror) {
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    assert!(!m.log().contains("compared in full"), "{}", m.log());
}

fn repair_counter(m: &Mirror, name: &str) -> u64 {
    m.status()["daemon"]["repair"][name].as_u64().unwrap()
}

#[test]
fn a_restart_repairs_only_what_the_journal_recorded() {
    let mut m = Mirror::setup(2).bind(1).mount();
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..100 {
        fs::write(m.path(&format!("f{i}")), vec![i as u8; 64 << 10]).unwrap();
    }
    for i in 0..20 {
        fs::write(m.path(&format!("d/g{i}")), vec![i as u8; 64 << 10]).unwrap();
    }
    m.wait_in_sync();
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    // Replica 1 refuses the first change and misses the rest.
    fs::write(m.path("f7"), b"rewritten").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/g3"))
        .unwrap()
        .write_all(b"appended")
        .unwrap();
    fs::write(m.path("new"), b"created while out").unwrap();
    fs::remove_file(m.path("f9")).unwrap();
    fs::rename(m.path("f11"), m.path("d/moved")).unwrap();
    fs::set_permissions(m.path("f12"), fs::Permissions::from_mode(0o600)).unwrap();
    let st = m.status();
    assert_eq!(st["daemon"]["replicas"][1]["state"], "failed", "{st}");
    // Unmounted while out of sync; the replica works again while nothing is mounted.
    m.unmount();
    remount(&r1, "rw");
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    // The repair thread logs its end just after the replica is back in sync.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = m.log();
    while !log.contains("repair done") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = m.log();
    }
    assert!(
        log.contains("repair brings it the paths the journal recorded")
            && log.contains("repair done"),
        "{log}"
    );
    // What repair copied: the few changed paths, not the 120 files of a full comparison.
    let files = repair_counter(&m, "files_repaired");
    let bytes = repair_counter(&m, "bytes_repaired");
    assert!(files <= 12, "{files} paths repaired");
    assert!(bytes <= 256 << 10, "{bytes} bytes repaired");
    assert_eq!(fs::read(m.replica(1, "f7")).unwrap(), b"rewritten");
    assert!(!m.replica(1, "f9").exists());
}

#[test]
fn a_large_file_heals_by_the_chunks_that_changed() {
    const MIB: usize = 1 << 20;
    let m = Mirror::setup(2).bind(1).mount();
    {
        let mut f = fs::File::create(m.path("image")).unwrap();
        let mut block = vec![0u8; MIB];
        for i in 0..1024usize {
            block.fill((i % 251) as u8);
            block[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    m.wait_in_sync();
    let before = repair_counter(&m, "bytes_repaired");
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("image"))
            .unwrap();
        f.seek(SeekFrom::Start(512 * MIB as u64 + 12345)).unwrap();
        f.write_all(&vec![0xEE; 3 * MIB]).unwrap();
    }
    remount(&r1, "rw");
    m.wait_in_sync();
    let copied = repair_counter(&m, "bytes_repaired") - before;
    assert!(
        (3 * MIB as u64..=8 * MIB as u64).contains(&copied),
        "repair copied {copied} bytes of a 1 GiB file for 3 MiB rewritten"
    );
    m.assert_in_sync();
}

#[test]
fn after_the_daemon_is_killed_mid_write_only_the_paths_in_flight_are_repaired() {
    let mut m = Mirror::setup(2).settling_often().mount();
    fs::create_dir(m.path("still")).unwrap();
    for i in 0..200 {
        fs::write(m.path(&format!("still/f{i}")), vec![i as u8; 16 << 10]).unwrap();
    }
    fs::create_dir(m.path("d")).unwrap();
    m.wait_settled();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (m.path("d"), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = vec![(i % 256) as u8; 256 << 10];
                if fs::write(dir.join(format!("f{}", i % 16)), data).is_err() {
                    return;
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    m.kill_daemon();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    let log = m.log();
    assert!(
        log.contains("did not end cleanly") && !log.contains("compared in full"),
        "{log}"
    );
    // The 16 files written and their directory at most; not the 200 left alone.
    let files = repair_counter(&m, "files_repaired");
    assert!(files <= 20, "{files} paths repaired");
}

#[test]
fn an_epoch_that_covers_many_files_is_settled_before_its_interval_ends() {
    // Ten minutes: nothing would settle during the test but for the epoch's size.
    let m = Mirror::with_args(2, &["--settle-interval", "600"]);
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..17_000 {
        fs::File::create(m.path(&format!("many/f{i}"))).unwrap();
    }
    let unsettled = || m.status()["daemon"]["unsettled_paths"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The first 16,384 files closed their epoch and it settled; the rest wait.
    while unsettled() > 1_000 {
        assert!(Instant::now() < deadline, "{} paths unsettled", unsettled());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        unsettled() > 0,
        "the files after the early close settled too"
    );
    m.assert_in_sync();
}

#[test]
fn a_write_whose_file_the_kernel_forgot_is_repaired_after_the_journal_is_compacted() {
    // Ten minutes: every change below stays in one unsettled epoch.
    let mut m = Mirror::with_args(2, &["--settle-interval", "600"]);
    fs::create_dir(m.path("many")).unwrap();
    let long = "n".repeat(200);
    let names: Vec<String> = (0..4000).map(|i| format!("many/{long}{i}")).collect();
    for name in &names {
        fs::write(m.path(name), b"x").unwrap();
    }
    fs::write(m.path("victim"), vec![7u8; 64 << 10]).unwrap();
    // A clean unmount settles all that; the next session starts with nothing in doubt.
    m.unmount();
    m.mount();
    fs::write(m.path("victim"), vec![9u8; 64 << 10]).unwrap();
    // The kernel forgets the file it wrote; then enough intents (a chmod of each long
    // name) make the journal compact itself while that write's epoch is unsettled.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    for name in &names {
        fs::set_permissions(m.path(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    m.kill_daemon();
    // What a crash between the two replicas' writes can leave: the old bytes on one.
    scribble(&m.replica(1, "victim"), 0);
    repaired_from_the_journal(&mut m);
    assert_eq!(
        fs::read(m.replica(1, "victim")).unwrap(),
        vec![9u8; 64 << 10]
    );
}

#[test]
fn a_file_still_open_after_writing_has_one_mtime_everywhere_once_settled() {
    let mut m = Mirror::setup(2).faulty(1).settling_often().mount();
    let mut f = fs::File::create(m.path("log")).unwrap();
    // The second replica takes the write 10 ms later: its own mtime differs.
    m.faults(1).write_delay_us.store(10_000, Ordering::Relaxed);
    f.write_all(b"a line of a log kept open\n").unwrap();
    m.faults(1).write_delay_us.store(0, Ordering::Relaxed);
    // Settled while the file is still open (watched in the journal: the status command
    // would fork, and its exec close a copy of the file), then a crash.
    let journal = || fs::read_to_string(m.replica(0, ".mirrorfs/journal")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_settled(&journal()) {
        assert!(Instant::now() < deadline, "never settled: {}", journal());
        std::thread::sleep(Duration::from_millis(100));
    }
    m.kill_daemon();
    drop(f);
    repaired_from_the_journal(&mut m);
}

/// Whether every intent in a journal's text is in an epoch a `settled` record closed.
fn all_settled(journal: &str) -> bool {
    let epochs = |op: &str| {
        journal
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["op"] == op)
            .filter_map(|r| r["epoch"].as_u64())
            .max()
    };
    match epochs("intent") {
        Some(intended) => epochs("settled").is_some_and(|settled| settled >= intended),
        None => true,
    }
}

#[test]
fn a_create_cut_short_by_a_crash_is_repaired_by_the_attributes_it_left() {
    let mut m = Mirror::setup(2).settling_often().mount();
    fs::create_dir(m.path("d")).unwrap();
    m.wait_settled();
    // A file made and closed just before the crash: the intent on its directory's listing
    // alone covers it (its times made equal at close need no record of their own). The
    // settler may void that intent before the kill; then it is tried again.
    let make = |m: &Mirror, attempt| {
        let name = format!("d/f{attempt}");
        fs::File::create(m.path(&name)).unwrap();
        name
    };
    let (name, _) = kill_while_in_flight(&mut m, make, |_, _| true);
    // What a crash half-way through the create can leave on the second replica: the
    // name, without the mode, owner and times the first has.
    let left = m.replica(1, &name);
    fs::set_permissions(&left, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&left, Some(4321), Some(4321)).unwrap();
    fs::File::options()
        .write(true)
        .open(&left)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    repaired_from_the_journal(&mut m);
}

#[test]
fn a_new_file_a_crash_left_different_is_taken_whole_from_the_head() {
    let mut m = Mirror::setup(2).settling_often().mount();
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..20 {
        fs::write(m.path(&format!("d/old{i}")), b"made long before").unwrap();
    }
    m.wait_settled();
    // Older than the clock slack the listing's intent allows for.
    std::thread::sleep(std::time::Duration::from_secs(6));
    // A file made and written just before the crash: the intent on its directory's
    // listing covers its contents too, with no record of its own (one durable record
    // per new file would cost an untar a flush per file).
    let make = |m: &Mirror, attempt| {
        let name = format!("d/f{attempt}");
        fs::write(m.path(&name), vec![7u8; 100_000]).unwrap();
        name
    };
    let no_record = |journal: &str, name: &str| {
        assert!(
            !journal.contains(&format!(r#""path":"{name}""#)),
            "{journal}"
        );
        true
    };
    let (name, attempt) = kill_while_in_flight(&mut m, make, no_record);
    // What a crash between the two replicas' writes can leave on the second: other
    // bytes, with the same size and times.
    scribble(&m.replica(1, &name), 50_000);
    repaired_from_the_journal(&mut m);
    assert_eq!(fs::read(m.replica(1, &name)).unwrap(), vec![7u8; 100_000]);
    // The new files and their directory, not the 20 old files.
    let files = repair_counter(&m, "files_repaired");
    assert!(files <= attempt + 2, "{files} files repaired");
}

#[test]
fn a_new_file_moved_before_a_crash_is_taken_whole_where_it_went() {
    let mut m = Mirror::setup(2).settling_often().mount();
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("e")).unwrap();
    m.wait_settled();
    // Renaming a new file flushes no record (no record names it): the intent on the
    // listing it lands in reaches back to when it was made.
    let make = |m: &Mirror, attempt| {
        let (from, to) = (format!("d/f{attempt}"), format!("e/f{attempt}"));
        fs::write(m.path(&from), vec![5u8; 50_000]).unwrap();
        fs::rename(m.path(&from), m.path(&to)).unwrap();
        to
    };
    let (name, _) = kill_while_in_flight(&mut m, make, |_, _| true);
    scribble(&m.replica(1, &name), 0);
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, &name)).unwrap(), vec![5u8; 50_000]);
}

#[test]
fn a_directory_replaced_by_a_symlink_before_a_crash_needs_no_full_comparison() {
    let mut m = Mirror::setup(2).settling_often().mount();
    for i in 0..10 {
        fs::create_dir(m.path(&format!("d{i}"))).unwrap();
    }
    m.wait_settled();
    // The listing of `dN` is intended, then `dN` becomes a symlink in the same epoch.
    let make = |m: &Mirror, attempt| {
        let dir = format!("d{attempt}");
        fs::write(m.path(&format!("{dir}/a")), b"x").unwrap();
        fs::remove_file(m.path(&format!("{dir}/a"))).unwrap();
        fs::remove_dir(m.path(&dir)).unwrap();
        std::os::unix::fs::symlink("elsewhere", m.path(&dir)).unwrap();
        dir
    };
    let intended = |journal: &str, dir: &str| journal.contains(&format!(r#""path":"{dir}""#));
    kill_while_in_flight(&mut m, make, intended);
    repaired_from_the_journal(&mut m);
}

#[test]
fn a_new_directory_a_crash_left_different_is_repaired_below_it() {
    let mut m = Mirror::setup(2).settling_often().mount();
    fs::create_dir(m.path("d")).unwrap();
    m.wait_settled();
    // A directory made and filled just before the crash: its listing is covered by its
    // parent's intent, with no record of its own, when all of it falls in one epoch.
    let make = |m: &Mirror, attempt| {
        let dir = format!("d/new{attempt}");
        fs::create_dir_all(m.path(&format!("{dir}/sub"))).unwrap();
        for name in ["a", "b", "sub/c"] {
            fs::write(m.path(&format!("{dir}/{name}")), vec![9u8; 20_000]).unwrap();
        }
        dir
    };
    let no_record = |journal: &str, dir: &str| !journal.contains(&format!(r#""{dir}"#));
    let (dir, _) = kill_while_in_flight(&mut m, make, no_record);
    // What a crash can leave on the second replica below it: a name missing, one extra,
    // and other bytes with the same size and times.
    fs::remove_file(m.replica(1, &format!("{dir}/b"))).unwrap();
    fs::write(m.replica(1, &format!("{dir}/sub/extra")), b"x").unwrap();
    scribble(&m.replica(1, &format!("{dir}/sub/c")), 0);
    repaired_from_the_journal(&mut m);
}

#[test]
fn a_file_made_while_a_replica_was_out_is_copied_once() {
    let m = Mirror::setup(2).bind(1).mount();
    fs::write(m.path("before"), b"in sync").unwrap();
    m.wait_in_sync();
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    fs::write(m.path("made"), vec![9u8; 8 << 20]).unwrap();
    remount(&r1, "rw");
    m.wait_in_sync();
    m.assert_in_sync();
    // Repairing the root's listing finds the file missing; its copy is not started over.
    assert_eq!(repair_counter(&m, "bytes_repaired"), 8 << 20);
}

#[test]
fn a_missed_exchange_of_two_directories_is_repaired_below_them() {
    let m = Mirror::setup(2).bind(1).mount();
    for d in ["d", "e"] {
        fs::create_dir(m.path(d)).unwrap();
        fs::write(m.path(&format!("{d}/f")), vec![d.as_bytes()[0]; 3 << 20]).unwrap();
    }
    m.wait_in_sync();
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    fs::write(m.path("trigger"), b"fail replica 1").unwrap();
    assert_eq!(renameat2(&m, "d", "e", libc::RENAME_EXCHANGE), 0);
    // A chunk written after the exchange: repairing that chunk alone would land in the
    // wrong file on the replica that missed the exchange.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("d/f"))
        .unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"after the exchange").unwrap();
    drop(f);
    remount(&r1, "rw");
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_marked_file_with_unknown_hard_links_is_repaired_through_all_of_them() {
    let mut m = Mirror::setup(2).bind(1).mount();
    fs::write(m.path("a"), b"old contents").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    m.unmount();
    m.mount();
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    // Only "a" is known to the new session; it is rewritten, then removed.
    fs::write(m.path("a"), b"new contents").unwrap();
    fs::remove_file(m.path("a")).unwrap();
    remount(&r1, "rw");
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, "b")).unwrap(), b"new contents");
}

#[test]
fn a_link_missed_before_a_restart_stays_a_link() {
    let mut m = Mirror::setup(2).bind(1).mount();
    fs::write(m.path("a"), b"linked").unwrap();
    m.wait_in_sync();
    let r1 = m.replicas[1].clone();
    remount(&r1, "ro");
    fs::hard_link(m.path("a"), m.path("c")).unwrap();
    m.unmount();
    remount(&r1, "rw");
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    use std::os::unix::fs::MetadataExt;
    let (a, c) = (
        fs::metadata(m.replica(1, "a")).unwrap(),
        fs::metadata(m.replica(1, "c")).unwrap(),
    );
    assert_eq!((a.dev(), a.ino()), (c.dev(), c.ino()));
}
