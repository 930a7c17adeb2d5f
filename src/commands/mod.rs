//! The command line: the top-level parser and one module per command (mount, umount,
//! health, repair, replica), each owning its own arguments. This module only dispatches; the
//! commands use the layers below and nothing of each other but the error type, `target` (the mirror a command is about) and,
//! for `repair --source`, the mount's checks of its arguments.

pub mod error;
pub mod health;
pub mod logging;
pub mod mount;
pub mod repair;
pub mod replica;
pub mod target;
pub mod umount;

use clap::{Parser, Subcommand};

use error::CliError;
use health::HealthArgs;
use mount::MountArgs;
use repair::RepairArgs;
use replica::ReplicaArgs;
use umount::UmountArgs;

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
    /// Take a replica of a mounted mirror out, or bring it back (root only).
    Replica(ReplicaArgs),
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
        Command::Mount(args) => mount::run(args).map(|()| 0),
        Command::Umount(args) => umount::run(args).map(|()| 0),
        Command::Health(args) => health::run(args),
        Command::Repair(args) => repair::run(args).map(|()| 0),
        Command::Replica(args) => replica::run(args).map(|()| 0),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("mirrorfs: {e}");
            e.status
        }
    }
}
