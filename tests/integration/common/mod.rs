//! Shared fixtures: a mounted mirror over temporary replicas that unmounts itself even
//! when a test fails, a tree snapshot that compares replicas, and small syscall helpers.

#![allow(dead_code)]

pub mod faultfs;
pub mod remote;
pub mod tree;

use faultfs::{FaultMount, Faults};
use remote::RemoteHost;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_mirrorfs");

/// Runs the mirrorfs binary with `args`.
pub fn mirrorfs(args: &[&OsStr]) -> Output {
    Command::new(BIN).args(args).output().expect("run mirrorfs")
}

/// Runs a system command (mount, umount) and asserts that it succeeded.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Remounts the bind mount at `path` `ro` or `rw`. Going read-only fails while a file is
/// open for writing there, and mirrorfs closes a replica's file when the kernel releases
/// it, which comes after the application's close(2) has returned: that is retried for up
/// to 2 s.
pub fn remount(path: &std::path::Path, mode: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,bind,{mode}")])
            .arg(path)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "remount {mode} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// renameat2(2) of two paths through the mount: 0 or the errno.
pub fn renameat2(m: &Mirror, from: &str, to: &str, flags: u32) -> i32 {
    let (a, b) = (cstr(&m.path(from)), cstr(&m.path(to)));
    // SAFETY: valid paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 { 0 } else { last_errno() }
}

/// utimensat(2) of `path` with `times` (access, modification) and `flags`; asserts it worked.
pub fn utimens(path: &Path, times: [libc::timespec; 2], flags: i32) {
    let p = cstr(path);
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), flags) };
    assert_eq!(r, 0, "utimensat errno {}", last_errno());
}

pub fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap()
}

/// A mirror of `n` replicas mounted over fresh temporary directories.
pub struct Mirror {
    pub dir: TempDir,
    pub replicas: Vec<PathBuf>,
    pub mnt: PathBuf,
    pub extra_args: Vec<String>,
    pid: Option<u32>,
    /// Fault filesystems serving replicas, unmounted after the mirror.
    faulty: Vec<(usize, FaultMount)>,
    /// bindfs daemons serving replicas (in the foreground), stopped after the mirror.
    bindfs: Vec<(usize, std::process::Child)>,
    /// Remote hosts serving replicas over sshfs, torn down after the mirror.
    remotes: Vec<(usize, RemoteHost)>,
    /// tmpfs and bind mounts made for replicas, unmounted after the mirror.
    mounts: Vec<PathBuf>,
}

/// How to build a mirror's replicas before mounting it.
pub struct Setup {
    n: usize,
    args: Vec<String>,
    tmpfs: Vec<(usize, String)>,
    faulty: Vec<usize>,
    bind: Vec<usize>,
    bindfs: Vec<usize>,
    sshfs: Vec<usize>,
    filesystems: Vec<(usize, &'static str)>,
}

impl Setup {
    /// Extra `mirrorfs mount` arguments.
    pub fn args(mut self, args: &[&str]) -> Setup {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Changes settle every second (not every 30 s), for tests that wait for it.
    pub fn settling_often(self) -> Setup {
        self.args(&["--settle-interval", "1"])
    }

    /// Replica `i` is a tmpfs of its own, of `size` (such as "1m").
    pub fn tmpfs(mut self, i: usize, size: &str) -> Setup {
        self.tmpfs.push((i, size.to_string()));
        self
    }

    /// Replica `i` is a bind mount of a backing directory (so it can be remounted
    /// read-only and back).
    pub fn bind(mut self, i: usize) -> Setup {
        self.bind.push(i);
        self
    }

    /// Replica `i` is served by a fault filesystem over a backing directory.
    pub fn faulty(mut self, i: usize) -> Setup {
        self.faulty.push(i);
        self
    }

    /// Replica `i` is a bindfs mount of a backing directory: a FUSE filesystem run by a
    /// daemon of its own, which [`Mirror::stop_bindfs`] stops as a dead server would.
    pub fn bindfs(mut self, i: usize) -> Setup {
        self.bindfs.push(i);
        self
    }

    /// Replica `i` is a fresh filesystem of `kind` ("xfs", "btrfs") on a loop device.
    pub fn filesystem(mut self, i: usize, kind: &'static str) -> Setup {
        self.filesystems.push((i, kind));
        self
    }

    /// Replica `i` is a directory on a remote host of its own (see [`RemoteHost`]),
    /// mounted with sshfs; [`Mirror::remote`] cuts and restores its link.
    pub fn sshfs(mut self, i: usize) -> Setup {
        self.sshfs.push(i);
        self
    }

    pub fn mount(self) -> Mirror {
        let dir = tempfile::Builder::new()
            .prefix("mirrorfs-test-")
            .tempdir()
            .unwrap();
        let replicas: Vec<PathBuf> = (0..self.n)
            .map(|i| dir.path().join(format!("r{i}")))
            .collect();
        for r in &replicas {
            std::fs::create_dir(r).unwrap();
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut m = Mirror {
            dir,
            replicas,
            mnt,
            extra_args: self.args,
            pid: None,
            faulty: Vec::new(),
            bindfs: Vec::new(),
            remotes: Vec::new(),
            mounts: Vec::new(),
        };
        for &i in &self.bind {
            let backing = m.dir.path().join(format!("backing{i}"));
            std::fs::create_dir(&backing).unwrap();
            run(Command::new("mount")
                .arg("--bind")
                .arg(&backing)
                .arg(&m.replicas[i]));
            m.mounts.push(m.replicas[i].clone());
        }
        for (i, size) in &self.tmpfs {
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&m.replicas[*i]));
            m.mounts.push(m.replicas[*i].clone());
        }
        for &i in &self.faulty {
            let backing = m.dir.path().join(format!("backing{i}"));
            std::fs::create_dir(&backing).unwrap();
            let fm = FaultMount::mount(&backing, &m.replicas[i]);
            m.faulty.push((i, fm));
        }
        for &i in &self.bindfs {
            let backing = m.dir.path().join(format!("backing{i}"));
            std::fs::create_dir(&backing).unwrap();
            let child = Command::new("bindfs")
                .arg("-f")
                .arg(&backing)
                .arg(&m.replicas[i])
                .spawn()
                .expect("run bindfs (scripts/setup.sh installs it)");
            m.bindfs.push((i, child));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !mirrorfs::engine::replica::is_mount_point(&m.replicas[i]) {
                assert!(Instant::now() < deadline, "bindfs never mounted");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for &(i, kind) in &self.filesystems {
            // xfs wants 300 MiB at least; the image is sparse.
            let image = m.dir.path().join(format!("image{i}"));
            fs::File::create(&image)
                .unwrap()
                .set_len(320 << 20)
                .unwrap();
            run(Command::new(format!("mkfs.{kind}")).arg("-q").arg(&image));
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&m.replicas[i]));
            m.mounts.push(m.replicas[i].clone());
        }
        for &i in &self.sshfs {
            let backing = m.dir.path().join(format!("backing{i}"));
            std::fs::create_dir(&backing).unwrap();
            let mut host = RemoteHost::start();
            host.mount(&backing, &m.replicas[i]);
            m.remotes.push((i, host));
        }
        m.mount();
        m
    }
}

impl Mirror {
    pub fn new(n: usize) -> Mirror {
        Mirror::setup(n).mount()
    }

    /// A mirror mounted with extra `mirrorfs mount` arguments.
    pub fn with_args(n: usize, args: &[&str]) -> Mirror {
        Mirror::setup(n).args(args).mount()
    }

    pub fn setup(n: usize) -> Setup {
        Setup {
            n,
            args: Vec::new(),
            tmpfs: Vec::new(),
            faulty: Vec::new(),
            bind: Vec::new(),
            bindfs: Vec::new(),
            sshfs: Vec::new(),
            filesystems: Vec::new(),
        }
    }

    /// The remote host serving replica `i` (made with [`Setup::sshfs`]).
    pub fn remote(&self, i: usize) -> &RemoteHost {
        &self
            .remotes
            .iter()
            .find(|(j, _)| *j == i)
            .expect("replica is on a remote host")
            .1
    }

    /// The fault controls of replica `i` (made with [`Setup::faulty`]).
    pub fn faults(&self, i: usize) -> &Faults {
        &self
            .faulty
            .iter()
            .find(|(j, _)| *j == i)
            .expect("replica is faulty")
            .1
            .faults
    }

    /// Sends `signal` to the bindfs daemon serving replica `i`.
    fn signal_bindfs(&self, i: usize, signal: i32) {
        let (_, child) = self
            .bindfs
            .iter()
            .find(|(j, _)| *j == i)
            .expect("replica is bindfs");
        // SAFETY: signalling the test's own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Stops the bindfs daemon of replica `i` (SIGSTOP): its filesystem stops answering.
    pub fn stop_bindfs(&self, i: usize) {
        self.signal_bindfs(i, libc::SIGSTOP);
    }

    /// Lets the bindfs daemon of replica `i` go on (SIGCONT).
    pub fn cont_bindfs(&self, i: usize) {
        self.signal_bindfs(i, libc::SIGCONT);
    }

    /// Mounts (again) with the mirror's arguments.
    pub fn mount(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").args(&self.replicas).arg(&self.mnt);
        cmd.arg("--log-file").arg(self.log_path());
        cmd.args(&self.extra_args);
        let out = cmd.output().expect("run mirrorfs mount");
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = Some(daemon_pid(&self.mnt).expect("daemon recorded its pid"));
    }

    /// The daemon's pid while mounted.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mirrorfs.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A path through the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A path inside replica `i`.
    pub fn replica(&self, i: usize, rel: &str) -> PathBuf {
        self.replicas[i].join(rel)
    }

    /// Unmounts with `mirrorfs umount`, which waits for the daemon to finish.
    pub fn unmount(&mut self) {
        let out = mirrorfs(&[OsStr::new("umount"), self.mnt.as_os_str()]);
        assert!(
            out.status.success(),
            "umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = None;
    }

    /// Kills the daemon with SIGKILL, as a crash would, and detaches its dead mount.
    pub fn kill_daemon(&mut self) {
        let pid = self.pid.take().expect("mounted") as i32;
        // SAFETY: killing and reaping nothing but the test's own daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let path = cstr(&self.mnt);
        // SAFETY: detaching the test's own (dead) mount.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }

    /// Asserts that the mount and every replica hold the same tree.
    pub fn assert_in_sync(&self) {
        let view = tree::snapshot(&self.mnt, false);
        for (i, r) in self.replicas.iter().enumerate() {
            let snap = tree::snapshot(r, true);
            if let Some(diff) = tree::first_difference(&view, &snap) {
                panic!("replica {i} differs from the mount: {diff}");
            }
        }
    }

    /// Waits (up to 60 s) until `mirrorfs health` reports every replica in sync, with
    /// nothing queued for any (async mode).
    pub fn wait_in_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = mirrorfs(&[OsStr::new("health"), self.mnt.as_os_str()]);
            if out.status.code() == Some(0) && self.nothing_queued() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not come back in sync: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (up to 30 s) until the measured read latency of each replica of `slow` is
    /// well above that of replica `fast` (more than 3 times, plus 0.1 ms), so that reads
    /// avoid them.
    pub fn wait_slower(&self, slow: &[usize], fast: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            let latency = |i: usize| {
                st["daemon"]["replicas"][i]["read_latency_us"]
                    .as_f64()
                    .unwrap()
            };
            if slow
                .iter()
                .all(|&i| latency(i) > 3.0 * latency(fast) + 100.0)
            {
                return;
            }
            assert!(Instant::now() < deadline, "never measured slower: {st}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// No replica has changes queued (always so in sync mode).
    fn nothing_queued(&self) -> bool {
        let st = self.status();
        st["daemon"]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lag"].is_null() || r["lag"]["operations"] == 0)
    }

    /// Waits (up to 30 s) until every change made through the mount is settled: nothing
    /// is left for a crash to put in doubt.
    pub fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            if st["daemon"]["unsettled_paths"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "changes never settled: {st}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The status the daemon reports, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = mirrorfs(&[
            OsStr::new("health"),
            OsStr::new("--json"),
            self.mnt.as_os_str(),
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "health --json is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // A stopped replica lets the daemon finish once it goes on.
        for (_, child) in &self.bindfs {
            // SAFETY: signalling the test's own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        for (_, host) in &self.remotes {
            host.restore_quietly();
        }
        self.stop_daemon();
        self.remotes.clear();
        self.faulty.clear();
        for (i, mut child) in self.bindfs.drain(..) {
            let p = cstr(&self.replicas[i]);
            // SAFETY: unmounting a bindfs this fixture mounted.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
            let _ = child.kill();
            let _ = child.wait();
        }
        for t in self.mounts.drain(..) {
            let p = cstr(&t);
            // SAFETY: unmounting a tmpfs this fixture mounted.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Mirror {
    /// Unmounts (lazily if busy) and makes sure the daemon is gone.
    fn stop_daemon(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let path = cstr(&self.mnt);
        // SAFETY: plain umount2 calls on our own mount point.
        unsafe {
            if libc::umount2(path.as_ptr(), 0) != 0 {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid as i32, 0) } == 0 {
            if Instant::now() > deadline {
                // SAFETY: the daemon is ours and stuck; stop it.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The pid a daemon recorded for `mnt`.
pub fn daemon_pid(mnt: &Path) -> Option<u32> {
    let key = mirrorfs::control::runtime::key(mnt);
    let text = std::fs::read_to_string(format!("/run/mirrorfs/{key}.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Runs `sh -c script` as uid/gid 65534 (nobody, without supplementary groups) with
/// umask 022, in `dir`.
pub fn as_nobody(dir: &Path, script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; {script}"))
        .current_dir(dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run sh as nobody")
}

/// Unmounts a mount point when dropped (lazily, so it never blocks), for tests that mount
/// something themselves; a test that fails leaves no mount behind.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let p = cstr(&self.0);
        // SAFETY: unmounting a path this test mounted; EINVAL when already unmounted.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}
