//! Replicas that stop answering: the fault filesystem made to hang (every call waits, as
//! on a network filesystem whose server died), bindfs stopped with SIGSTOP, and replicas
//! that are slow but answering. The mount goes on within the deadline, health says which
//! replica does not answer, and once it answers again repair makes it identical.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{Mirror, mirrorfs};

/// The deadline the tests mount with.
const TIMEOUT: Duration = Duration::from_secs(1);

/// How long an operation may take while a replica hangs: the deadline plus one second.
const BOUND: Duration = Duration::from_secs(2);

/// Runs `f` on a thread of its own and fails (after calling `unblock`, so that the test
/// can clean up) if it takes longer than `limit`. Returns how long it took.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    unblock: impl FnOnce(),
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let started = Instant::now();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, started.elapsed()),
        Err(_) => {
            unblock();
            panic!("{what} took more than {limit:?} while a replica hung");
        }
    }
}

/// `mirrorfs health` of `m`: its exit code and first two lines.
fn health(m: &Mirror) -> (Option<i32>, String) {
    let out = mirrorfs(&[OsStr::new("health"), m.mnt.as_os_str()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits until health reports WARNING with replica `i` not answering; returns how long
/// that took.
fn wait_not_answering(m: &Mirror, i: usize, limit: Duration, unblock: impl FnOnce()) -> Duration {
    let started = Instant::now();
    let path = m.replicas[i].display().to_string();
    loop {
        let (code, text) = health(m);
        let line = text.lines().find(|l| l.contains(&path)).unwrap_or_default();
        if code == Some(1) && line.contains("failed") && line.contains("not answering") {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            unblock();
            panic!("health never said replica {i} was not answering: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One operation a test tries.
type Op = Box<dyn FnOnce() + Send>;

/// The operations a user tries while a replica hangs, each of which must finish within
/// `bound`: a new file written and closed, a file read back, a listing, a stat, a
/// directory made, a rename and an unlink.
fn everything_goes_on(m: &Mirror, bound: Duration, unblock: &dyn Fn()) {
    let base = m.mnt.clone();
    let ops: Vec<(&str, Op)> = vec![
        ("echo two > f2", {
            let p = base.join("f2");
            Box::new(move || fs::write(p, b"two\n").unwrap())
        }),
        ("cat f1", {
            let p = base.join("f1");
            Box::new(move || assert_eq!(fs::read(p).unwrap(), b"one\n"))
        }),
        ("ls", {
            let p = base.clone();
            Box::new(move || {
                let names: Vec<_> = fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert!(names.iter().any(|n| n == "f1"), "{names:?}");
            })
        }),
        ("stat", {
            let p = base.join("d/inner");
            Box::new(move || assert_eq!(fs::metadata(p).unwrap().len(), 5))
        }),
        ("mkdir", {
            let p = base.join("made");
            Box::new(move || fs::create_dir(p).unwrap())
        }),
        ("mv", {
            let (a, b) = (base.join("d/inner"), base.join("d/moved"));
            Box::new(move || fs::rename(a, b).unwrap())
        }),
        ("rm", {
            let p = base.join("gone");
            Box::new(move || fs::remove_file(p).unwrap())
        }),
    ];
    for (what, op) in ops {
        within(what, bound, unblock, op);
    }
}

/// Files the experiment starts from.
fn populate(m: &Mirror) {
    fs::write(m.path("f1"), b"one\n").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/inner"), b"inner").unwrap();
    fs::write(m.path("gone"), b"x").unwrap();
}

#[test]
fn a_primary_that_stops_answering_does_not_stall_the_mount_and_is_repaired_after() {
    // The first replica hangs: reads (which start there) and writes (which go there
    // first) must not wait for it. Names and attributes are not cached by the kernel,
    // so that every operation reaches the mirror.
    let timeout = format!("{}", TIMEOUT.as_secs_f64());
    let m = Mirror::setup(2)
        .faulty(0)
        .args(&["--replica-timeout", &timeout, "--cache-ttl", "0"])
        .mount();
    populate(&m);
    m.wait_in_sync();
    let faults = m.faults(0);
    let release = || faults.release();
    faults.hang();
    let started = Instant::now();
    everything_goes_on(&m, BOUND, &release);
    wait_not_answering(&m, 0, BOUND, release);
    assert!(started.elapsed() < BOUND * 8, "{:?}", started.elapsed());
    assert!(
        faults.waiting.load(Ordering::SeqCst) > 0,
        "the replica was reached"
    );
    let st = m.status();
    let r0 = &st["daemon"]["replicas"][0];
    assert_eq!(r0["failure"]["errno"], libc::ETIMEDOUT, "{st}");
    assert!(r0["stuck_calls"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["daemon"]["replicas"][1]["state"], "in-sync", "{st}");
    // Later operations do not wait for it at all.
    let (_, took) = within("a write after", BOUND, release, {
        let p = m.path("later");
        move || fs::write(p, b"later").unwrap()
    });
    assert!(took < TIMEOUT, "waited {took:?} for a failed replica");
    // It answers again: its stuck calls return, it is re-admitted and repaired.
    faults.release();
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(0, "f2")).unwrap(), b"two\n");
    assert!(m.replica(0, "d/moved").exists() && !m.replica(0, "gone").exists());
    let log = m.log();
    assert_eq!(log.matches("replica is not answering").count(), 1, "{log}");
}

#[test]
fn a_hung_replica_is_found_by_its_pulse_when_nothing_else_reaches_it() {
    let timeout = format!("{}", TIMEOUT.as_secs_f64());
    let m = Mirror::setup(2)
        .faulty(1)
        .args(&["--replica-timeout", &timeout])
        .mount();
    fs::write(m.path("f"), b"x").unwrap();
    m.wait_in_sync();
    let faults = m.faults(1);
    faults.hang();
    // The pulse comes every second, and is given up after the deadline.
    let took = wait_not_answering(&m, 1, TIMEOUT + Duration::from_secs(2), || faults.release());
    assert!(took <= TIMEOUT + Duration::from_millis(1500), "{took:?}");
    faults.release();
    m.wait_in_sync();
    m.assert_in_sync();
}

#[test]
fn a_slow_replica_stays_in_sync() {
    // 200 ms per operation of the replica's filesystem (a call of mirrorfs makes
    // several), and a flush that takes three deadlines: slow, but answering.
    let timeout = Duration::from_secs(2);
    let m = Mirror::setup(2)
        .faulty(1)
        .args(&["--replica-timeout", &format!("{}", timeout.as_secs_f64())])
        .mount();
    let faults = m.faults(1);
    faults.delay_us.store(200_000, Ordering::Relaxed);
    faults
        .fsync_delay_us
        .store(3 * timeout.as_micros() as u64, Ordering::Relaxed);
    let f = fs::File::create(m.path("big")).unwrap();
    for i in 0..4u64 {
        f.write_all_at(&[i as u8; 64 << 10], i << 16).unwrap();
    }
    let started = Instant::now();
    f.sync_all().unwrap();
    assert!(
        started.elapsed() >= 3 * timeout,
        "the flush did not wait for the slow replica: {:?} {}",
        started.elapsed(),
        m.status()
    );
    drop(f);
    fs::create_dir(m.path("d")).unwrap();
    fs::rename(m.path("big"), m.path("d/big")).unwrap();
    let st = m.status();
    for r in st["daemon"]["replicas"].as_array().unwrap() {
        assert_eq!(r["state"], "in-sync", "{st}");
        assert!(r["failure"].is_null(), "{st}");
    }
    assert!(!m.log().contains("not answering"));
    faults.delay_us.store(0, Ordering::Relaxed);
    faults.fsync_delay_us.store(0, Ordering::Relaxed);
    m.assert_in_sync();
}

#[test]
fn unmounting_while_a_replica_hangs_finishes_and_the_next_mount_repairs_it() {
    // The first replica hangs: request threads, which reach it inline, stay inside it.
    let timeout = format!("{}", TIMEOUT.as_secs_f64());
    let mut m = Mirror::setup(2)
        .faulty(0)
        .args(&["--replica-timeout", &timeout])
        .mount();
    fs::write(m.path("before"), b"before").unwrap();
    m.wait_in_sync();
    let faults = m.faults(0);
    faults.hang();
    within("a write", BOUND, || faults.release(), {
        let p = m.path("during");
        move || fs::write(p, b"during").unwrap()
    });
    wait_not_answering(&m, 0, BOUND, || faults.release());
    // The daemon finishes although threads stay inside the hung replica.
    let mnt = m.mnt.clone();
    let (out, _) = within(
        "umount",
        Duration::from_secs(10),
        || faults.release(),
        move || mirrorfs(&[OsStr::new("umount"), mnt.as_os_str()]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = m.log();
    assert!(log.contains("shutting down without the threads"), "{log}");
    // The daemon's threads leave the replica once it answers; then it is gone, and with
    // it its lock on the replicas.
    let pid = m.pid().unwrap() as i32;
    faults.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the old daemon never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    m.mount();
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(0, "during")).unwrap(), b"during");
}

#[test]
fn the_stopped_bindfs_experiment_goes_on_within_the_deadline() {
    // The experiment of the issue that asked for this: a plain directory and a FUSE
    // replica whose daemon is stopped, with the default deadline.
    let deadline = Duration::from_secs(3);
    let bound = deadline + Duration::from_secs(1);
    let m = Mirror::setup(2).bindfs(1).mount();
    populate(&m);
    m.wait_in_sync();
    m.stop_bindfs(1);
    let cont = || m.cont_bindfs(1);
    let started = Instant::now();
    everything_goes_on(&m, bound, &cont);
    let found = wait_not_answering(&m, 1, bound, cont);
    assert!(started.elapsed() < 8 * bound, "{:?}", started.elapsed());
    assert!(found <= bound, "{found:?}");
    m.cont_bindfs(1);
    m.wait_in_sync();
    m.assert_in_sync();
    assert_eq!(fs::read(m.replica(1, "f2")).unwrap(), b"two\n");
    assert!(m.replica(1, "d/moved").exists() && !m.replica(1, "gone").exists());
}
