//! Whether a replica answers, and calls on it that never wait longer than it does.
//!
//! Every call mirrorfs makes on a replica's filesystem is registered while it runs: which
//! thread, which replica, since when, what it is. From that the watchdog
//! (`engine::executor::watch`) tells a replica that is *slow* from one that is *stuck*: it has
//! had a call outstanding for the whole deadline (`--replica-timeout`) and its pulse (a
//! small read of its own, see `repair::prober`, that always reaches the replica's disk or
//! server) has not come back in that time either. Other calls do not count as answers:
//! one may return without reaching the replica at all (from a cache, or doing nothing). A stuck replica is abandoned
//! ([`Liveness::declare_stuck`]): its epoch moves on, every caller waiting for one of its
//! calls gets ETIMEDOUT at once, calls queued for it are dropped unstarted, and it is failed
//! as not answering.
//!
//! A thread blocked in the kernel on a hung filesystem cannot be interrupted, only left
//! there, so the threads one replica can hold are bounded:
//! - request threads make their calls inline (a thread handoff costs more than most calls),
//!   at most [`Liveness::set_inline_limit`] of them inside one replica at once; past that
//!   a call goes to the replica's workers;
//! - every other call runs on the replica's own worker threads, at most [`POOL_MAX`]; when
//!   all of them are busy and a queued call has waited the whole deadline, the replica is
//!   stuck too.
//!
//! No thread holds a lock another replica's work needs while it is inside a call: request
//! threads hold only locks of the operation they serve, which another thread finishes (and
//! releases) when the call is abandoned; workers hold none.
//!
//! The replica is back once every call left in it has returned ([`Liveness::revive`]).

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

/// How often a caller waiting for a worker's call looks whether the replica was abandoned.
pub const TICK: Duration = Duration::from_millis(10);

/// The most worker threads one replica has.
pub const POOL_MAX: usize = 16;

/// A call slot's `live` when no call is under way.
const IDLE: u64 = 0;

/// The identity the next [`Liveness`] gets.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Nanoseconds since the daemon started, on the monotonic clock.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a call on a replica that was abandoned returns.
pub fn not_answering() -> io::Error {
    io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

/// The registration of the call one thread is making.
struct CallSlot {
    /// The [`Liveness::id`] of the replica the call is on, or [`IDLE`].
    live: AtomicU64,
    since: AtomicU64,
    what: Mutex<&'static str>,
    /// What the thread is doing for the watchdog to act on (an operation it drives).
    payload: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

static SLOTS: Mutex<Vec<&'static CallSlot>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: &'static CallSlot = {
        let slot: &'static CallSlot = Box::leak(Box::new(CallSlot {
            live: AtomicU64::new(IDLE),
            since: AtomicU64::new(0),
            what: Mutex::new(""),
            payload: Mutex::new(None),
        }));
        SLOTS.lock().push(slot);
        slot
    };
}

/// A call under way, as the watchdog sees it.
pub struct CallInfo {
    /// The [`Liveness::id`] of its replica.
    pub live: u64,
    /// How long it has been running.
    pub age: Duration,
    pub what: &'static str,
    pub payload: Option<Arc<dyn Any + Send + Sync>>,
}

/// Every call under way, on any replica.
pub fn calls() -> Vec<CallInfo> {
    let slots: Vec<&'static CallSlot> = SLOTS.lock().clone();
    let now = now_ns();
    slots
        .into_iter()
        .filter_map(|s| {
            let live = s.live.load(Ordering::Acquire);
            if live == IDLE {
                return None;
            }
            let since = s.since.load(Ordering::Acquire);
            Some(CallInfo {
                live,
                age: Duration::from_nanos(now.saturating_sub(since)),
                what: *s.what.lock(),
                payload: s.payload.lock().clone(),
            })
        })
        .collect()
}

/// A call under way on a replica; it ends when dropped.
pub struct Call<'a> {
    live: &'a Liveness,
    slot: &'static CallSlot,
}

impl Call<'_> {
    /// Ends the call; returns how long it took.
    pub fn end(self) -> Duration {
        let since = self.slot.since.load(Ordering::Relaxed);
        let took = Duration::from_nanos(now_ns().saturating_sub(since));
        self.finish();
        std::mem::forget(self);
        took
    }

    fn finish(&self) {
        *self.slot.payload.lock() = None;
        self.slot.live.store(IDLE, Ordering::Release);
        self.live.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request thread's place inside a replica (see [`Liveness::enter_inline`]).
pub struct Inline<'a>(&'a Liveness);

impl Drop for Inline<'_> {
    fn drop(&mut self) {
        self.0.inline.fetch_sub(1, Ordering::AcqRel);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A replica's worker threads, started as calls need them.
struct Pool {
    tx: Sender<Job>,
    shared: Arc<PoolShared>,
}

/// What a pool's workers share with it.
struct PoolShared {
    rx: Receiver<Job>,
    name: String,
    threads: AtomicUsize,
    idle: AtomicUsize,
    queued: AtomicUsize,
    /// When a worker last took a call off the queue.
    last_start: AtomicU64,
}

impl Pool {
    fn new(name: String) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            tx,
            shared: Arc::new(PoolShared {
                rx,
                name,
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                last_start: AtomicU64::new(now_ns()),
            }),
        }
    }

    fn submit(&self, job: Job) {
        let s = &self.shared;
        s.queued.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send(job)
            .expect("the pool's receiver lives as long as the pool");
        // Every call queued has a worker to take it, up to the limit.
        if s.queued.load(Ordering::Acquire) > s.idle.load(Ordering::Acquire)
            && s.threads.load(Ordering::Acquire) < POOL_MAX
        {
            self.spawn();
        }
    }

    fn spawn(&self) {
        let n = self.shared.threads.fetch_add(1, Ordering::AcqRel);
        if n >= POOL_MAX {
            self.shared.threads.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let s = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{n}", s.name))
            .spawn(move || {
                loop {
                    s.idle.fetch_add(1, Ordering::AcqRel);
                    let job = s.rx.recv();
                    s.idle.fetch_sub(1, Ordering::AcqRel);
                    // The pool is gone: so is its replica.
                    let Ok(job) = job else { return };
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                    s.last_start.store(now_ns(), Ordering::Release);
                    job();
                }
            });
        if spawned.is_err() {
            self.shared.threads.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether every worker is busy and a queued call has waited at least `d`.
    fn exhausted(&self, d: Duration) -> bool {
        let s = &self.shared;
        s.queued.load(Ordering::Acquire) > 0
            && s.idle.load(Ordering::Acquire) == 0
            && s.threads.load(Ordering::Acquire) >= POOL_MAX
            && now_ns().saturating_sub(s.last_start.load(Ordering::Acquire)) >= d.as_nanos() as u64
    }
}

/// Whether one replica answers, and the threads that call it.
pub struct Liveness {
    /// Unique in the process: what call registrations name the replica by.
    pub id: u64,
    in_flight: AtomicUsize,
    /// When the replica's pulse last came back.
    last_answer: AtomicU64,
    /// Moves on each time the replica is abandoned: calls begun before are given up.
    epoch: AtomicU64,
    stuck: AtomicBool,
    /// Request threads inside a call on it.
    inline: AtomicUsize,
    inline_limit: AtomicUsize,
    pool: Pool,
    pulse: (Sender<()>, Receiver<()>),
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight)
            .field("stuck", &self.stuck)
            .finish()
    }
}

/// A call given to a replica's workers; [`Pending::wait`] for its result.
pub struct Pending<T> {
    live: Arc<Liveness>,
    epoch: u64,
    rx: Receiver<io::Result<T>>,
}

impl<T> Pending<T> {
    /// The call's result, or ETIMEDOUT as soon as the replica is abandoned.
    pub fn wait(self) -> io::Result<T> {
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Timeout) if self.live.epoch() != self.epoch => {
                    return Err(not_answering());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
    }
}

impl Liveness {
    /// The liveness of replica `index` (for thread names).
    pub fn new(index: usize) -> Liveness {
        Liveness {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            last_answer: AtomicU64::new(now_ns()),
            epoch: AtomicU64::new(0),
            stuck: AtomicBool::new(false),
            inline: AtomicUsize::new(0),
            inline_limit: AtomicUsize::new(usize::MAX),
            pool: Pool::new(format!("replica{index}")),
            pulse: crossbeam_channel::bounded(1),
        }
    }

    /// How many request threads may be inside a call on this replica at once.
    pub fn set_inline_limit(&self, n: usize) {
        self.inline_limit.store(n.max(1), Ordering::Release);
    }

    /// A request thread's place inside the replica, or `None` when as many as allowed are
    /// in already (the call then goes to the workers).
    pub fn enter_inline(&self) -> Option<Inline<'_>> {
        let limit = self.inline_limit.load(Ordering::Acquire);
        if self.inline.fetch_add(1, Ordering::AcqRel) >= limit {
            self.inline.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Inline(self))
    }

    /// Registers a call `what` this thread makes now, with `payload` for the watchdog.
    pub fn begin(
        &self,
        what: &'static str,
        payload: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Call<'_> {
        let slot = SLOT.with(|s| *s);
        debug_assert_eq!(
            slot.live.load(Ordering::Relaxed),
            IDLE,
            "nested replica call"
        );
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        *slot.what.lock() = what;
        *slot.payload.lock() = payload;
        slot.since.store(now_ns(), Ordering::Release);
        slot.live.store(self.id, Ordering::Release);
        Call { live: self, slot }
    }

    /// The epoch calls begin in now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the replica was abandoned and some call left in it has not returned.
    pub fn stuck(&self) -> bool {
        self.stuck.load(Ordering::Acquire)
    }

    /// Calls under way on the replica (while stuck: those left in it).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The replica's pulse came back: it answers.
    pub fn answered(&self) {
        self.last_answer.store(now_ns(), Ordering::Release);
    }

    /// How long since the replica last answered a pulse.
    pub fn silent_for(&self) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(self.last_answer.load(Ordering::Acquire)))
    }

    /// Whether every worker has been busy for `d` with calls waiting.
    pub fn exhausted(&self, d: Duration) -> bool {
        self.pool.exhausted(d)
    }

    /// The replica stopped answering: calls under way and queued are given up. Returns
    /// false if it was already.
    pub fn declare_stuck(&self) -> bool {
        if self.stuck.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Every call left in an abandoned replica has returned: it may be used again.
    /// Returns false while some are still in it.
    pub fn revive(&self) -> bool {
        if !self.stuck() {
            return true;
        }
        if self.in_flight() > 0 || self.inline.load(Ordering::Acquire) > 0 {
            return false;
        }
        self.answered();
        self.stuck.store(false, Ordering::Release);
        true
    }

    /// Runs `job` on one of the replica's workers.
    pub fn run_later(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.submit(Box::new(job));
    }

    /// Starts `f` on one of the replica's workers, registered as call `what`. It does not
    /// start if the replica is abandoned before a worker takes it.
    pub fn start<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let epoch = self.epoch();
        if self.stuck() {
            let _ = tx.send(Err(not_answering()));
        } else {
            let me = self.clone();
            self.run_later(move || {
                let result = if me.epoch() != epoch {
                    Err(not_answering())
                } else {
                    let _call = me.begin(what, None);
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                        .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)))
                };
                let _ = tx.send(result);
            });
        }
        Pending {
            live: self.clone(),
            epoch,
            rx,
        }
    }

    /// Runs `f` on one of the replica's workers and waits for it, or until the replica is
    /// abandoned (ETIMEDOUT).
    pub fn call<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        self.start(what, f).wait()
    }

    /// Asks the replica's pulse (a small read it makes every second) to come now: a call
    /// has been under way long, and a pulse that answers shows the replica is slow, not
    /// stuck.
    pub fn hurry_pulse(&self) {
        let _ = self.pulse.0.try_send(());
    }

    /// Waits `interval` for the next pulse, or less when hurried.
    pub fn wait_pulse(&self, interval: Duration) {
        let _ = self.pulse.1.recv_timeout(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(index: usize) -> Arc<Liveness> {
        Arc::new(Liveness::new(index))
    }

    #[test]
    fn a_call_returns_its_result_and_only_a_pulse_counts_as_an_answer() {
        let l = live(0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(l.call("test", || Ok(7)).unwrap(), 7);
        assert_eq!(l.in_flight(), 0);
        assert!(l.silent_for() >= Duration::from_millis(20));
        l.answered();
        assert!(l.silent_for() < Duration::from_millis(20));
    }

    #[test]
    fn a_call_on_an_abandoned_replica_gives_up_and_later_ones_do_not_start() {
        let l = live(1);
        let (release, blocked) = crossbeam_channel::bounded::<()>(0);
        let pending = l.start("hang", move || {
            let _ = blocked.recv();
            Ok(())
        });
        // The call is registered while it runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !calls().iter().any(|c| c.live == l.id && c.what == "hang") {
            assert!(Instant::now() < deadline, "the call was never registered");
            std::thread::sleep(Duration::from_millis(1));
        }
        let waiter = std::thread::spawn(move || pending.wait());
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !waiter.is_finished(),
            "waits while the replica is not abandoned"
        );
        assert!(l.declare_stuck());
        assert!(!l.declare_stuck(), "abandoned once");
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        // Nothing new reaches it, and it is not back while the call is in it.
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        assert!(
            l.call("later", move || {
                r2.store(true, Ordering::SeqCst);
                Ok(())
            })
            .is_err()
        );
        assert!(!l.revive());
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !l.revive() {
            assert!(Instant::now() < deadline, "never revived");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(l.call("after", || Ok(1)).unwrap(), 1);
    }

    #[test]
    fn request_threads_inside_a_replica_are_bounded() {
        let l = live(2);
        l.set_inline_limit(2);
        let a = l.enter_inline().unwrap();
        let _b = l.enter_inline().unwrap();
        assert!(l.enter_inline().is_none());
        drop(a);
        assert!(l.enter_inline().is_some());
    }

    #[test]
    fn a_pool_whose_workers_are_all_busy_is_exhausted_once_a_call_waited_long() {
        let l = live(3);
        let (release, blocked) = crossbeam_channel::unbounded::<()>();
        for _ in 0..POOL_MAX {
            let b = blocked.clone();
            drop(l.start("busy", move || {
                let _ = b.recv();
                Ok(())
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.in_flight() < POOL_MAX {
            assert!(Instant::now() < deadline, "workers never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(l.start("queued", || Ok(())));
        assert!(!l.exhausted(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.exhausted(Duration::from_millis(20)));
        for _ in 0..POOL_MAX {
            release.send(()).unwrap();
        }
    }
}
