//! `mirrorfs mount`: check the request, lock the replicas, go to the background (unless
//! `--foreground`), mount, and serve FUSE requests until unmounted.

mod daemon;
mod lock;
pub mod options;
pub mod plan;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use tracing::{error, info, warn};

use crate::cli::MountArgs;
use crate::cli_error;
use crate::control;
use crate::error::CliError;
use crate::fs::fuse_adapter::FuseMirror;
use crate::fs::{FsOptions, MirrorFs};
use crate::replica::Replica;
use crate::runtime::{self, RuntimeInfo};
use crate::sys;

use daemon::Ready;
use options::MountOptions;
use plan::MountPlan;

fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 2).max(2)
}

/// The fuser configuration for a mount.
fn fuse_config(plan: &MountPlan, opts: &MountOptions, threads: usize) -> Config {
    let mut config = Config::default();
    let joined = plan
        .replicas
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let fsname = opts
        .fsname
        .clone()
        .unwrap_or(if joined.contains([',', ' ', '\t', '\n', '\\']) {
            "mirrorfs".to_string()
        } else {
            joined
        });
    config.mount_options = opts.kernel.clone();
    config.mount_options.extend([
        MountOption::DefaultPermissions,
        MountOption::FSName(fsname),
        // The kernel shows it as the filesystem type fuse.mirrorfs.
        MountOption::CUSTOM("subtype=mirrorfs".into()),
    ]);
    config.acl = opts.acl;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

pub fn run(args: MountArgs) -> Result<(), CliError> {
    let plan = plan::plan(&args.paths)?;
    let opts = options::parse(&args.options)?;
    let threads = args
        .threads
        .or(opts.threads)
        .unwrap_or_else(default_threads);
    if threads == 0 {
        return Err(cli_error!("threads must be at least 1"));
    }
    let ttl = args.cache_ttl.or(opts.cache_ttl).unwrap_or(1.0);
    if !ttl.is_finite() || ttl < 0.0 {
        return Err(cli_error!(
            "cache_ttl must be a number of seconds, 0 or more"
        ));
    }
    let fs_options = FsOptions {
        ttl: Duration::from_secs_f64(ttl),
    };
    let config = fuse_config(&plan, &opts, threads);
    let locks = lock::lock_replicas(&plan.replicas, opts.read_only)?;

    if args.foreground {
        crate::logging::init(&args.log_level, None);
        return serve(&plan, config, fs_options, &mut None, None);
    }
    let log_path = args
        .log_file
        .clone()
        .unwrap_or_else(|| runtime::default_log_file(&plan.mount_point));
    let log = open_log(&log_path)?;
    let mut ready = Some(daemon::detach(&log)?);
    crate::logging::init(&args.log_level, Some(log));
    let result = serve(&plan, config, fs_options, &mut ready, Some(log_path));
    if let (Err(e), Some(r)) = (&result, ready.as_mut()) {
        r.fail(&e.message);
    }
    drop(locks);
    result
}

fn open_log(path: &Path) -> Result<File, CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| cli_error!("cannot create log directory {}: {e}", dir.display()))?;
    }
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| cli_error!("cannot open log file {}: {e}", path.display()))
}

/// The signals that unmount the mirror.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Unmounts on SIGINT, SIGTERM or SIGHUP: normally, or lazily when files are still open
/// (the daemon then serves them until they are closed).
fn watch_signals(set: libc::sigset_t, mount_point: PathBuf) {
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of the blocked signals.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            info!(signal = sig, "unmounting on signal");
            let path = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
                .expect("mount point has no NUL");
            match sys::umount(&path, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    warn!("mount point is busy; detaching it, open files are still served");
                    if let Err(e) = sys::umount(&path, libc::MNT_DETACH) {
                        error!(error = %e, "lazy unmount failed");
                    }
                }
                Err(e) => error!(error = %e, "unmount failed"),
            }
        }
    });
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Mounts and serves until unmounted. Called in the daemon (or the foreground process).
fn serve(
    plan: &MountPlan,
    config: Config,
    fs_options: FsOptions,
    ready: &mut Option<Ready>,
    log_file: Option<PathBuf>,
) -> Result<(), CliError> {
    // Modes are computed per request; the daemon's own umask must not change them.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) };
    raise_fd_limit();
    let signals = shutdown_signals();
    // SAFETY: blocks the signals in this thread; threads spawned later inherit the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let replicas = plan
        .replicas
        .iter()
        .enumerate()
        .map(|(i, p)| Replica::open(i, p).map_err(|e| cli_error!("replica {}: {e}", p.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let fs = Arc::new(MirrorFs::new(replicas, fs_options));
    let session = fuser::Session::new(FuseMirror(fs.clone()), &plan.mount_point, &config)
        .map_err(|e| cli_error!("cannot mount {}: {e}", plan.mount_point.display()))?;
    if config.acl == SessionACL::All {
        info!("allow_other: every user reaches the mount, checked by default_permissions");
    }
    let info = RuntimeInfo {
        pid: std::process::id(),
        mount_point: plan.mount_point.clone(),
        replicas: plan.replicas.clone(),
        log_file,
    };
    if let Err(e) = runtime::write(&info) {
        warn!(error = %e, "cannot write the runtime record; `mirrorfs umount` will not wait");
    }
    if let Err(e) = control::serve(fs, plan.mount_point.clone()) {
        warn!(error = %e, "cannot open the control socket; `mirrorfs health` will not answer");
    }
    watch_signals(signals, plan.mount_point.clone());
    info!(
        mount_point = %plan.mount_point.display(),
        replicas = ?plan.replicas,
        "mounted"
    );
    if let Some(r) = ready.as_mut() {
        r.ok();
    }
    let result = session.run();
    runtime::remove(&plan.mount_point);
    control::remove(&plan.mount_point);
    match result {
        Ok(()) => {
            info!("unmounted; replicas synced");
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "session ended with an error");
            Err(cli_error!("session ended: {e}"))
        }
    }
}
