//! The command line: `mirrorfs mount` and `mirrorfs umount`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;

/// mirrorfs: one mount point over N directories that hold the same tree.
///
/// Every change made through the mount is applied to every replica directory; reads come
/// from a replica that is up to date and fail over to another on error.
#[derive(Debug, Parser)]
#[command(name = "mirrorfs", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a mirror of REPLICA directories at MOUNTPOINT.
    Mount(MountArgs),
    /// Unmount a mirror and wait for its daemon to finish.
    Umount(UmountArgs),
    /// Show the state of each replica of a mounted mirror (monitoring-plugin format).
    Health(HealthArgs),
    /// Repair a mounted mirror now, or pick the replica to keep after a split brain.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mirrorfs mount /disk1/data /disk2/data /mnt/data
  mirrorfs mount /disk1/data:/disk2/data /mnt/data -o allow_other
  mirrorfs umount /mnt/data

By default the command returns once the mount is ready and the daemon keeps running in \
the background, logging to /var/log/mirrorfs/<mount point>.log. The mount always uses \
default_permissions: the kernel checks access like on a local filesystem.")]
pub struct MountArgs {
    /// Replica directories (first = primary), then the mount point. A single
    /// `dirA:dirB:dirC` replica argument is also accepted.
    #[arg(value_name = "REPLICA... MOUNTPOINT", num_args = 1.., required = true)]
    pub paths: Vec<PathBuf>,

    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount options, comma-separated: allow_other, allow_root, default_permissions
    /// (always on), ro, rw, suid, nosuid, dev, nodev, exec, noexec, atime, noatime, sync,
    /// async, dirsync, fsname=NAME, threads=N, cache_ttl=SECONDS, repair_rate=RATE,
    /// settle_interval=SECONDS, replica_timeout=SECONDS. fstab-only options
    /// (defaults, nofail, _netdev, noauto, x-...) are ignored.
    #[arg(short = 'o', value_name = "OPTS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,

    /// Threads serving FUSE requests [default: twice the CPU count, at least 2].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Bytes per second repair may copy, with a K, M or G suffix; 0 for no limit
    /// [default: 100M].
    #[arg(long, value_name = "RATE")]
    pub repair_rate: Option<String>,

    /// Replicas a change must reach before it is acknowledged; the others are marked
    /// degraded and repaired later. With fewer working replicas, changes fail with EIO
    /// [default: 1: every working replica is written, one is enough]. Sync mode only.
    #[arg(long, value_name = "N")]
    pub write_quorum: Option<usize>,

    /// When a write is acknowledged: `sync`, once every working replica has it; `async`,
    /// once the primary has it (the others apply it from their queue, in order).
    #[arg(long, value_enum, default_value_t = ModeArg::Sync)]
    pub mode: ModeArg,

    /// Async mode: how far a replica's queue may fall behind, in bytes (K, M, G) and
    /// optionally operations, before the replica is marked out of sync and repaired
    /// instead [default: 256M,65536].
    #[arg(long, value_name = "SIZE[,OPS]")]
    pub max_lag: Option<String>,

    /// Async mode: fsync returns once every replica has flushed the file, not the primary
    /// alone.
    #[arg(long)]
    pub fsync_all: bool,

    /// Seconds the kernel may cache names and attributes [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    pub cache_ttl: Option<f64>,

    /// Seconds between two settlings of the changes made: every replica's filesystem is
    /// synced and the write intents of the changes before are voided. After a crash,
    /// repair looks at what changed in about the last interval; a shorter one leaves
    /// less to look at and syncs the disks more often [default: 30; 1 to 600].
    #[arg(long, value_name = "SECONDS")]
    pub settle_interval: Option<u64>,

    /// Seconds a replica may go without completing any call while it has one under way
    /// before it is failed as not answering; requests then go on without it. A replica
    /// that is slow but answering is never failed for it [default: 3; 0.1 to 600].
    #[arg(long, value_name = "SECONDS")]
    pub replica_timeout: Option<f64>,

    /// Log file of the background daemon [default: /var/log/mirrorfs/<mount point>.log].
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Also make non-empty directories without mirrorfs metadata replicas. For a new
    /// mirror their contents are kept (see --source); added to an existing mirror, their
    /// contents are replaced by the mirror's.
    #[arg(long)]
    pub init: bool,

    /// With --init, the replica whose contents a new mirror is built from, when several
    /// hold data (the others' contents are replaced).
    #[arg(long, value_name = "REPLICA", requires = "init")]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Sync,
    Async,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point of a mirrorfs mount.
    pub mount_point: PathBuf,

    /// Seconds to wait for the daemon to finish after unmounting.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: 0 OK (every replica in sync), 1 WARNING (a replica is degraded; every path is \
still readable), 2 CRITICAL (a path is readable from no replica, or the daemon is gone or \
not answering), 3 UNKNOWN (not a mirrorfs mount).")]
pub struct HealthArgs {
    /// The mount point of a mirrorfs mount.
    pub mount_point: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Forms:
  mirrorfs repair MOUNTPOINT          repair out-of-sync replicas now
  mirrorfs repair --full MOUNTPOINT   compare every replica in full (metadata and
                                      contents) against an in-sync one
  mirrorfs repair --source KEEP OTHER...
                                      with the mirror unmounted, after a split brain: keep
                                      KEEP's data; the others lose their changes since they
                                      were last in sync and are compared in full against it
                                      at the next mount")]
pub struct RepairArgs {
    /// The replica whose data is kept (with the mirror unmounted).
    #[arg(long, value_name = "REPLICA", conflicts_with = "full")]
    pub source: Option<PathBuf>,

    /// Compare every replica in full, not only what is recorded as out of sync.
    #[arg(long)]
    pub full: bool,

    /// The mount point; with --source, the other replicas.
    #[arg(value_name = "MOUNTPOINT | REPLICA...", required = true)]
    pub paths: Vec<PathBuf>,
}

/// Runs the command line and returns the process exit status.
pub fn run() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Mount(_)) {
        // A command whose output goes to a closed pipe (`| head`) just ends, like other
        // command-line tools. The daemon keeps SIGPIPE ignored: a client that hangs up
        // on the control socket must not kill it.
        // SAFETY: setting a signal disposition before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result: Result<i32, CliError> = match cli.command {
        Command::Mount(args) => crate::mount::run(args).map(|()| 0),
        Command::Umount(args) => crate::umount::run(args).map(|()| 0),
        Command::Health(args) => crate::health::run(args),
        Command::Repair(args) => crate::repair_cmd::run(args).map(|()| 0),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("mirrorfs: {e}");
            e.status
        }
    }
}
