//! The arguments of `mirrorfs mount`.

use std::path::PathBuf;

use clap::Args;

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
