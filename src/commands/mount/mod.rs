//! `mirrorfs mount`: check the request, lock the replicas, go to the background (unless
//! `--foreground`), mount, and serve FUSE requests until unmounted.

mod args;
mod daemon;
mod kernel;
pub mod options;
pub mod plan;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, SessionACL};
use tracing::{error, info, warn};

use crate::cli_error;
use crate::commands::error::CliError;
use crate::commands::logging::LogFile;
use crate::control::runtime::{self, RuntimeInfo};
use crate::control::socket;
use crate::durability::intent::DEFAULT_SETTLE_INTERVAL;
use crate::durability::lanes::MaxLag;
use crate::engine::features::Features;
use crate::engine::replica::Replica;
use crate::engine::set::MirrorSet;
use crate::fuse::adapter::FuseMirror;
use crate::membership::lock;
use crate::membership::{
    self,
    assemble::{Assembly, Role},
};
use crate::ops::mirror::Mode;
use crate::ops::{FsOptions, MirrorFs};
use crate::sys;
pub use args::{ModeArg, MountArgs};

use options::MountOptions;
use plan::MountPlan;

fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 2).max(2)
}

/// The source name the mount shows (`mount`, `df`): the replica list unless given.
fn fsname(plan: &MountPlan, opts: &MountOptions) -> String {
    opts.fsname.clone().unwrap_or_else(|| {
        plan.replicas
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// How many request threads may be inside one replica's calls at once: half of those
/// asked for. A replica that stops answering keeps the threads inside it, so with one
/// replica of a pair hung the other half keeps serving; a mirror of more replicas gets
/// that many more threads per replica beyond two, so that all but one may hang. (Idle
/// threads are not free: the kernel hands each request to the thread idle longest, and
/// waking a thread that has gone cold costs more than the request on a VM.)
fn inline_limit(threads: usize) -> usize {
    (threads / 2).max(1)
}

/// The threads the FUSE session runs for `threads` asked for over `replicas` replicas.
fn session_threads(threads: usize, replicas: usize) -> usize {
    threads + inline_limit(threads) * replicas.saturating_sub(2)
}

/// The fuser session configuration.
fn fuse_config(opts: &MountOptions, threads: usize) -> Config {
    let mut config = Config::default();
    config.acl = opts.acl;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

/// Bytes per second repair copies unless told otherwise: well below what a disk does, so
/// that applications keep most of it.
const DEFAULT_REPAIR_RATE: u64 = 100 << 20;

/// Seconds the kernel caches names and attributes unless told otherwise: long, because
/// mirrorfs is the only writer of its replicas and every change through the mount
/// updates or invalidates what the kernel holds.
const DEFAULT_TTL: f64 = 86_400.0;

/// The longest cache TTL accepted: a day.
const MAX_TTL: f64 = 86_400.0;

/// How long a replica may have a call under way without completing any, unless told
/// otherwise: see the README's "Replicas that stop answering". Pulses (a small read every
/// second, at once when a call is slow) show a slow replica still answers, so the
/// deadline can be short: a replica failed by mistake costs a repair of what it missed,
/// a stalled mount costs every application.
const DEFAULT_REPLICA_TIMEOUT: f64 = 3.0;

/// The replica timeouts accepted, in seconds.
const REPLICA_TIMEOUTS: std::ops::RangeInclusive<f64> = 0.1..=600.0;

/// The settle intervals accepted: the longest leaves ten minutes of changes for repair to
/// look at after a crash.
const SETTLE_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

pub fn run(args: MountArgs) -> Result<(), CliError> {
    limit_malloc_arenas();
    let plan = plan::plan(&args.paths)?;
    let opts = options::parse(&args.options)?;
    let threads = args
        .threads
        .or(opts.threads)
        .unwrap_or_else(default_threads);
    if threads == 0 {
        return Err(cli_error!("threads must be at least 1"));
    }
    let ttl = args.cache_ttl.or(opts.cache_ttl).unwrap_or(DEFAULT_TTL);
    if !(0.0..=MAX_TTL).contains(&ttl) {
        return Err(cli_error!(
            "cache_ttl must be a number of seconds from 0 to {MAX_TTL}"
        ));
    }
    let settle_interval = args
        .settle_interval
        .or(opts.settle_interval)
        .map_or(DEFAULT_SETTLE_INTERVAL, Duration::from_secs);
    if !SETTLE_INTERVALS.contains(&settle_interval) {
        return Err(cli_error!(
            "settle_interval must be a number of seconds from 1 to 600"
        ));
    }
    let replica_timeout = args
        .replica_timeout
        .or(opts.replica_timeout)
        .unwrap_or(DEFAULT_REPLICA_TIMEOUT);
    if !REPLICA_TIMEOUTS.contains(&replica_timeout) {
        return Err(cli_error!(
            "replica_timeout must be a number of seconds from 0.1 to 600"
        ));
    }
    let repair_rate = match args.repair_rate.as_deref().or(opts.repair_rate.as_deref()) {
        Some(text) => options::parse_rate(text)?,
        None => DEFAULT_REPAIR_RATE,
    };
    let mode = match args.mode {
        ModeArg::Sync => {
            if args.max_lag.is_some() || args.fsync_all {
                return Err(cli_error!(
                    "--max-lag and --fsync-all apply to --mode async"
                ));
            }
            Mode::Sync
        }
        ModeArg::Async => {
            if args.write_quorum.is_some() {
                return Err(cli_error!("--write-quorum applies to --mode sync"));
            }
            Mode::Async {
                max_lag: match &args.max_lag {
                    Some(text) => options::parse_max_lag(text)?,
                    None => MaxLag::DEFAULT,
                },
                fsync_all: args.fsync_all,
            }
        }
    };
    let write_quorum = args.write_quorum.unwrap_or(1);
    if !(1..=plan.replicas.len()).contains(&write_quorum) {
        return Err(cli_error!(
            "write quorum must be from 1 to the number of replicas ({})",
            plan.replicas.len()
        ));
    }
    let fs_options = FsOptions {
        repair_rate,
        write_quorum,
        mode,
        ttl: Duration::from_secs_f64(ttl),
        settle_interval,
        replica_timeout: Duration::from_secs_f64(replica_timeout),
        inline_limit: inline_limit(threads),
    };
    let config = fuse_config(&opts, session_threads(threads, plan.replicas.len()));
    let log = if args.foreground {
        None
    } else {
        let path = args
            .log_file
            .clone()
            .unwrap_or_else(|| runtime::default_log_file(&plan.mount_point));
        Some(LogFile::open(&path).map_err(|e| {
            cli_error!(
                "cannot open log file {}: {}",
                path.display(),
                sys::describe(&e)
            )
        })?)
    };
    let mut locks = lock::lock_existing(&plan.replicas, &plan.roots)?;
    let mut assembly = assemble(&plan, &args)?;
    // In async mode every replica but the primary (the head) may lag behind it.
    let queued = fs_options.mode.queues();
    for (i, st) in assembly.states.iter_mut().enumerate() {
        st.lags = queued && i != assembly.head;
    }
    if !opts.read_only() {
        let recorded = locks
            .create_missing(&plan.replicas, &plan.roots)
            .map_err(CliError::from)
            .and_then(|()| record(&plan, &assembly));
        if let Err(e) = recorded {
            locks.undo_creation();
            return Err(e);
        }
    }
    let mut ready = match &log {
        Some(log) => match log
            .try_clone_file()
            .map_err(|e| cli_error!("log file {}: {}", log.path().display(), sys::describe(&e)))
            .and_then(|stderr| daemon::detach(&stderr))
        {
            Ok(ready) => Some(ready),
            Err(e) => {
                locks.undo_creation();
                return Err(e);
            }
        },
        None => None,
    };
    crate::commands::logging::init(&args.log_level, log.clone());
    let mounted = match start(plan, &opts, config, fs_options, log, &assembly) {
        Ok(m) => m,
        Err(e) => {
            if let Some(r) = ready.as_mut() {
                r.fail(&e.message);
            }
            locks.undo_creation();
            return Err(e);
        }
    };
    if let Some(r) = ready.as_mut() {
        r.ok();
    }
    // Each replica holds its own lock from now on: one removed while mounted lets go.
    mounted.fs.hold_locks(locks.take());
    let result = mounted.serve();
    drop(locks);
    result
}

/// Reads what the replicas say about themselves and decides the session's roles.
fn assemble(plan: &MountPlan, args: &MountArgs) -> Result<Assembly, CliError> {
    let given = membership::read_given(&plan.replicas, &plan.roots)
        .map_err(|e| cli_error!("cannot read replica metadata: {}", sys::describe(&e)))?;
    let source = match &args.source {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .map_err(|e| cli_error!("--source {}: {}", p.display(), sys::describe(&e)))?,
        ),
        None => None,
    };
    let mut assembly = membership::assemble::assemble(&given, args.init, source.as_ref())
        .map_err(CliError::new)?;
    let journal = match membership::journal::load(plan.roots[assembly.head].as_fd()) {
        Ok(j) => j,
        Err(e) => {
            assembly.notes.push(format!(
                "the journal of {} cannot be read ({}); replicas behind it are compared in \
                 full",
                plan.replicas[assembly.head].display(),
                sys::describe(&e)
            ));
            None
        }
    };
    membership::assemble::resume(&mut assembly, journal.as_ref());
    Ok(assembly)
}

/// Records each replica's state for the session, durably, before it is mounted.
fn record(plan: &MountPlan, assembly: &Assembly) -> Result<(), CliError> {
    for ((path, root), state) in plan.replicas.iter().zip(&plan.roots).zip(&assembly.states) {
        // A copy split off is no longer this mirror's to write (it may rejoin).
        if state.split_at.is_some() {
            continue;
        }
        state.save(root.as_fd()).map_err(|e| {
            cli_error!(
                "replica {}: cannot record its state: {}",
                path.display(),
                sys::describe(&e)
            )
        })?;
    }
    Ok(())
}

/// Blocks the signals the daemon handles itself (SIGINT, SIGTERM: unmount; SIGHUP: reopen
/// the log) in this thread and every thread spawned after, and returns them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set, then blocking it in this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Handles the blocked signals on a thread of its own: SIGHUP reopens the log file (for
/// log rotation); SIGINT and SIGTERM unmount, lazily when files are still open (the daemon
/// then serves them until they are closed).
fn watch_signals(set: libc::sigset_t, mount_point: PathBuf, log: Option<LogFile>) {
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of the blocked signals.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGHUP {
                if let Some(log) = &log
                    && let Err(e) = log.reopen()
                {
                    error!(error = %sys::describe(&e), "cannot reopen the log file");
                }
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
                        error!(error = %sys::describe(&e), "lazy unmount failed");
                    }
                }
                Err(e) => error!(error = %sys::describe(&e), "unmount failed"),
            }
        }
    });
}

/// Process limits for a daemon that serves other users' files: as many descriptors as
/// allowed, and no file size limit inherited from the shell that mounted it.
fn set_limits() {
    // SAFETY: getrlimit/setrlimit on local structs; SIGXFSZ ignored so that a limit that
    // still applies fails the write (EFBIG) instead of killing the daemon.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        libc::setrlimit(libc::RLIMIT_FSIZE, &unlimited);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Keeps the allocator to two arenas. glibc gives each new thread an arena of its own, up
/// to eight per CPU, and the daemon starts short-lived threads to reach slow replicas at
/// once: with an arena for each, freed memory stayed spread over them and the daemon held
/// 305-325 bytes per inode the kernel holds, against 236-290 with two
/// (`scripts/bench-memory.sh`), with no change in speed.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Lazily unmounts a mount this daemon made but will not serve.
fn detach(mount_point: &std::path::Path) {
    if let Ok(path) = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes()) {
        let _ = sys::umount(&path, libc::MNT_DETACH);
    }
}

/// What `replica`'s filesystem can hold, logged when it lacks something. A replica whose
/// probe fails is taken to hold everything: its operations then fail (and mark it) one by
/// one, as they would have without the probe.
fn found_features(replica: &Replica) -> Features {
    match replica.find_features() {
        Ok(found) => {
            let lacking = found.lacking();
            if !lacking.is_empty() {
                warn!(
                    replica = %replica.path.display(),
                    "the replica's filesystem lacks {}", lacking.join(", ")
                );
            }
            found
        }
        Err(e) => {
            warn!(replica = %replica.path.display(), "cannot probe what the replica's filesystem holds: {}", sys::describe(&e));
            Features::default()
        }
    }
}

/// A mounted mirror, ready to serve.
struct Mounted {
    session: fuser::Session<FuseMirror>,
    mount_point: PathBuf,
    control: socket::Socket,
    fs: Arc<MirrorFs>,
}

/// Mounts the mirror: opens the replicas, mounts (the kernel handshake is done when this
/// returns), records the daemon in /run/mirrorfs and opens the control socket.
fn start(
    plan: MountPlan,
    opts: &MountOptions,
    config: Config,
    fs_options: FsOptions,
    log: Option<LogFile>,
    assembly: &Assembly,
) -> Result<Mounted, CliError> {
    // Files mirrorfs itself creates (runtime records) get ordinary permissions; see
    // `Mounted::serve` for the umask used while serving.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    set_limits();
    let signals = block_signals();
    let name = fsname(&plan, opts);
    let MountPlan {
        replicas: paths,
        roots,
        mount_point,
    } = plan;
    let replicas = paths
        .iter()
        .zip(roots)
        .enumerate()
        .map(|(i, (p, root))| {
            let mut replica = Replica::new(i, p, root);
            if !opts.read_only() {
                replica.features = found_features(&replica);
            }
            replica
        })
        .collect();
    for note in &assembly.notes {
        info!("{note}");
    }
    for (path, role) in paths.iter().zip(&assembly.roles) {
        if *role != Role::InSync {
            warn!(replica = %path.display(), "replica is not in sync; it is not used until it is repaired");
        }
    }
    let queued = fs_options.mode.queues();
    let set = MirrorSet::new(assembly, opts.read_only(), queued);
    let fs = Arc::new_cyclic(|me| MirrorFs::new(replicas, fs_options, set, me.clone()));
    fs.resume(&assembly.missed);
    fs.keep_taken_out(assembly.head);
    let dev = kernel::mount(&mount_point, &name, opts).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (mounting needs root)"
        } else {
            ""
        };
        cli_error!(
            "cannot mount {}: {}{hint}",
            mount_point.display(),
            sys::describe(&e)
        )
    })?;
    let session = fuser::Session::from_fd(FuseMirror(fs.clone()), dev, config.acl, config)
        .map_err(|e| {
            detach(&mount_point);
            cli_error!(
                "cannot start serving {}: {}",
                mount_point.display(),
                sys::describe(&e)
            )
        })?;
    if opts.acl == SessionACL::All {
        info!("allow_other: every user reaches the mount, checked by default_permissions");
    }
    let info = RuntimeInfo {
        pid: std::process::id(),
        mount_point: mount_point.clone(),
        replicas: paths.clone(),
        log_file: log.as_ref().map(|l| l.path().to_path_buf()),
    };
    runtime::write(&info).map_err(|e| {
        detach(&mount_point);
        cli_error!(
            "cannot record the daemon in {}: {}",
            runtime::RUNTIME_DIR,
            sys::describe(&e)
        )
    })?;
    let control = socket::serve(fs.clone(), mount_point.clone()).map_err(|e| {
        runtime::remove(&mount_point);
        detach(&mount_point);
        cli_error!("cannot open the control socket: {}", sys::describe(&e))
    })?;
    fs.start();
    watch_signals(signals, mount_point.clone(), log);
    info!(mount_point = %mount_point.display(), replicas = ?paths, "mounted");
    Ok(Mounted {
        session,
        mount_point,
        control,
        fs,
    })
}

impl Mounted {
    /// Serves FUSE requests until the mirror is unmounted.
    fn serve(self) -> Result<(), CliError> {
        // Modes of new nodes are computed per request (the caller's umask, or a default
        // ACL); the daemon's own umask must not change them.
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0) };
        let Mounted {
            session,
            mount_point,
            control,
            fs,
        } = self;
        let device = crate::sys::mountinfo::mounted_at(&mount_point)
            .ok()
            .flatten()
            .map(|m| m.device);
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                let _ = tx.send(session.run());
            })
            .map_err(|e| cli_error!("cannot start serving: {e}"))?;
        let result = wait_for_session(&rx, &fs, device.as_deref());
        runtime::remove(&mount_point);
        control.remove();
        match result {
            Ok(()) => {
                info!("unmounted; replicas synced");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "session ended with an error");
                Err(cli_error!("session ended: {}", sys::describe(&e)))
            }
        }
    }
}

/// Waits for the FUSE session to end. It ends once every thread serving it has returned,
/// and a thread held inside a replica that stopped answering may never return: once the
/// mount (FUSE connection `device`) is gone and such a replica holds threads, the mirror
/// is shut down without them.
fn wait_for_session(
    session: &crossbeam_channel::Receiver<std::io::Result<()>>,
    fs: &MirrorFs,
    device: Option<&str>,
) -> std::io::Result<()> {
    use crossbeam_channel::RecvTimeoutError;
    let mounted = || {
        crate::sys::mountinfo::mounts()
            .map(|all| all.iter().any(|m| Some(m.device.as_str()) == device))
            .unwrap_or(true)
    };
    loop {
        match session.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the session thread ended"));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if device.is_none() || fs.abandoned() == 0 || mounted() {
            continue;
        }
        // The threads that were not held end within moments of the unmount.
        if let Ok(result) = session.recv_timeout(Duration::from_secs(2)) {
            return result;
        }
        warn!(
            "unmounted while a replica does not answer: shutting down without the threads \
             it holds"
        );
        fs.shut_down();
        return Ok(());
    }
}
