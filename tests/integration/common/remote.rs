//! A remote host for replicas on another machine: `sshd` in a network namespace of the
//! test's own, reached over a veth pair with addresses the test assigns, and directories
//! mounted from it with sshfs. The link can be cut and restored as a dead network would.
//! Everything is torn down on drop (the namespace, sshd, the sshfs mounts), even when the
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{cstr, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// sshfs options that make a mount fit to be a replica: it reconnects after the link
/// comes back, and notices a dead link within a few seconds instead of TCP's minutes.
pub const SSHFS_OPTIONS: &str =
    "reconnect,ServerAliveInterval=1,ServerAliveCountMax=2,ConnectTimeout=2,BatchMode=yes";

pub struct RemoteHost {
    ns: String,
    /// The veth end inside the namespace (the remote host's network card).
    remote_if: String,
    address: String,
    keys: TempDir,
    sshd: Child,
    mounts: Vec<(PathBuf, Child)>,
}

impl RemoteHost {
    /// Starts a host of its own: a namespace, a link to it and sshd listening there.
    pub fn start() -> RemoteHost {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}x{n}", pid % 100_000);
        let ns = format!("mfs{tag}");
        let (host_if, remote_if) = (format!("mfh{tag}"), format!("mfr{tag}"));
        // A /30 of 10.231.0.0/16 per host this process starts.
        let k = (pid.wrapping_mul(8).wrapping_add(n)) % 16_384;
        let base = format!("10.231.{}.{}", k >> 6, (k & 63) * 4);
        let octets: Vec<u32> = base.split('.').map(|o| o.parse().unwrap()).collect();
        let addr = |last: u32| format!("10.231.{}.{}", octets[2], octets[3] + last);
        let (host_addr, address) = (addr(1), addr(2));
        let keys = tempfile::Builder::new()
            .prefix("mirrorfs-remote-")
            .tempdir()
            .unwrap();
        // From here on, whatever was made is undone by drop.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &ns]));
        let mut host = RemoteHost {
            ns: ns.clone(),
            remote_if: remote_if.clone(),
            address: address.clone(),
            keys,
            sshd: Command::new("true").spawn().unwrap(),
            mounts: Vec::new(),
        };
        run(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &remote_if, "netns", &ns,
        ]));
        run(Command::new("ip").args(["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]));
        run(Command::new("ip").args(["link", "set", &host_if, "up"]));
        host.ip(&["addr", "add", &format!("{address}/30"), "dev", &remote_if]);
        host.ip(&["link", "set", &remote_if, "up"]);
        host.ip(&["link", "set", "lo", "up"]);
        host.start_sshd();
        host
    }

    /// `ip ARGS` inside the namespace.
    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.ns).args(args));
    }

    fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    fn start_sshd(&mut self) {
        for (key, kind) in [("host_key", "ed25519"), ("id", "ed25519")] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(self.key(key)));
        }
        std::fs::copy(self.key("id.pub"), self.key("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let config = format!(
            "ListenAddress {}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             Subsystem sftp internal-sftp\n",
            self.address,
            self.key("host_key").display(),
            self.key("authorized_keys").display(),
            self.key("sshd.pid").display(),
        );
        std::fs::write(self.key("sshd_config"), config).unwrap();
        self.sshd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(self.key("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .expect("run sshd (scripts/setup.sh installs openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.key("sshd.pid").exists() {
            assert!(Instant::now() < deadline, "sshd never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Mounts the remote host's `dir` at `at` with sshfs (as root, so owners are kept),
    /// with [`SSHFS_OPTIONS`].
    pub fn mount(&mut self, dir: &Path, at: &Path) {
        let child = Command::new("sshfs")
            .arg("-f")
            .arg(format!("root@{}:{}", self.address, dir.display()))
            .arg(at)
            .arg("-o")
            .arg(format!(
                "{SSHFS_OPTIONS},IdentityFile={},StrictHostKeyChecking=no,\
                 UserKnownHostsFile=/dev/null,LogLevel=ERROR",
                self.key("id").display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("run sshfs (scripts/setup.sh installs it)");
        self.mounts.push((at.to_path_buf(), child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !mirrorfs::engine::replica::is_mount_point(at) {
            assert!(
                Instant::now() < deadline,
                "sshfs never mounted {}",
                at.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts the link on the remote side: packets to it are lost, as when the host or the
    /// network dies (the host side keeps its route, so nothing answers in its place).
    pub fn cut(&self) {
        self.ip(&["link", "set", &self.remote_if, "down"]);
    }

    /// Brings the link back.
    pub fn restore(&self) {
        self.ip(&["link", "set", &self.remote_if, "up"]);
    }

    /// Brings the link back, as a teardown does: failing silently (the namespace may be
    /// gone already), never panicking in a drop.
    pub fn restore_quietly(&self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "set", &self.remote_if, "up"])
            .stderr(Stdio::null())
            .status();
    }

    /// Unmounts the sshfs mounts and stops their daemons (lazily: one may hang).
    pub fn unmount_all(&mut self) {
        for (at, mut child) in self.mounts.drain(..) {
            let p = cstr(&at);
            // SAFETY: detaching an sshfs this fixture mounted.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        self.unmount_all();
        // `ip netns exec` runs sshd in its own place: the child is the listening sshd.
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        // Deleting the namespace removes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
