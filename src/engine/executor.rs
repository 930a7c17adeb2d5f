//! The executor of operations: a request's per-replica steps run on the thread that serves
//! it, and when a step does not return another thread finishes the request.
//!
//! An operation is an `async` function that awaits *fan-outs* ([`Engine::fan`]): one step,
//! a `'static` closure, to run on each of a list of replicas. [`Engine::block_on`] drives
//! it on the calling thread: it polls the operation, runs the steps of the fan-out it
//! waits on inline (a thread handoff costs more than most steps), and polls again. Steps
//! own what they use, so any thread can run them; the operation itself may borrow from the
//! caller, which does not return before the operation is finished, wherever it finished.
//!
//! The watchdog ([`watch`]) looks at every call under way (see [`crate::engine::liveness`]):
//! - a replica with a call outstanding for the whole deadline and no pulse answered in
//!   that time is stuck: it is abandoned, and each operation whose driving thread is inside
//!   it is *rescued*: its step there is given up (ETIMEDOUT), and a new thread becomes the
//!   operation's driver and finishes it, on the other replicas, under the rules of the
//!   operation (its reply, its marks, its locks). The old thread stays in the kernel until
//!   the replica answers, then sees the operation taken over and returns;
//! - a read (a fan-out that wants the first answer) whose replica has not answered within
//!   the hedge delay is *hedged*: another thread tries the next replica, and whichever
//!   answers first is taken;
//! - a call under way for a quarter of the deadline asks its replica for a pulse (at
//!   once), so that a slow replica shows it still answers.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing::{error, warn};

use crate::engine::liveness::{self, TICK, not_answering};
use crate::engine::replica::Replica;
use crate::sys;

/// What the engine needs of the mirror it runs operations for.
pub trait Context: Send + Sync + Sized + 'static {
    fn replicas(&self) -> &[Replica];
    fn engine(&self) -> &Engine<Self>;
    /// Replica `index` stopped answering: a call `what` has had no reply for `waited`.
    /// Called once, from the watchdog: it must not wait on any replica.
    fn not_answering(&self, index: usize, what: &'static str, waited: Duration);
}

/// How a fan-out's steps are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// On every replica, one after the other.
    InTurn,
    /// On every replica, the first on this thread and the others on their workers at the
    /// same time: for steps that wait long (a flush, a large copy, a slow replica).
    AtOnce,
    /// On one replica after the other until one answers (a fault, EIO or ENOSPC or the
    /// like, is no answer): reads. Hedged when a replica is slow to answer.
    First,
    /// As `First`, never hedged: a change that only one replica takes now (async mode).
    Until,
}

impl How {
    /// Whether the first answer ends the fan-out.
    fn first_answer(self) -> bool {
        matches!(self, How::First | How::Until)
    }
}

/// Which latency a fan-out's steps are counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Read,
    Write,
    /// A change of names: counted as a write, and as a namespace change.
    Namespace,
}

impl Measure {
    fn record(self, r: &Replica, took: Duration) {
        match self {
            Measure::Read => r.read_latency.record(took),
            Measure::Write => r.write_latency.record(took),
            Measure::Namespace => {
                r.write_latency.record(took);
                r.namespace_latency.record(took);
            }
        }
    }
}

/// The shortest time a read waits for its replica before it is also tried on another.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(20);

/// The running operations of one mirror.
pub struct Engine<C> {
    me: Weak<C>,
    /// How long a replica may go without completing a call while it has one outstanding.
    pub timeout: Duration,
}

impl<C: Context> Engine<C> {
    /// The engine of the mirror `me` will hold once built.
    pub fn new(me: Weak<C>, timeout: Duration) -> Engine<C> {
        Engine { me, timeout }
    }

    /// The mirror, for threads that outlive a request.
    pub fn mirror(&self) -> Option<Arc<C>> {
        self.me.upgrade()
    }

    /// How long a read waits for replica `r` before it is tried on another too: several
    /// times what reads there take lately, at least [`HEDGE_FLOOR`], at most half the
    /// deadline.
    pub fn hedge_delay(&self, r: &Replica) -> Duration {
        let usual = Duration::from_secs_f64(r.read_latency.micros() * 8.0 / 1e6);
        usual.max(HEDGE_FLOOR).min(self.timeout / 2)
    }

    /// Runs `fut` to its end, driving its fan-outs on this thread; if this thread is held
    /// in a replica that stopped answering, another thread finishes it, and this one
    /// returns once the replica lets it go.
    pub fn block_on<'a, T: Send + 'a>(
        &self,
        ctx: &'a C,
        fut: impl Future<Output = T> + Send + 'a,
    ) -> T {
        let mut out: Option<T> = None;
        let slot = Out(&mut out);
        let task: Pin<Box<dyn Future<Output = ()> + Send + 'a>> = Box::pin(async move {
            let value = fut.await;
            let slot = slot;
            // SAFETY: `out` outlives the task (see below), and only the task writes it.
            unsafe { *slot.0 = Some(value) };
        });
        // SAFETY: the task borrows for 'a (the caller's arguments, `out`). Another thread
        // may poll and drop it, but only while this function has not returned: it returns
        // after `wait_finished`, which comes after the task was dropped, and it cannot
        // unwind before (`AbortOnUnwind`). Steps, which may outlive it, are 'static.
        // The result comes back through `out`, which is read only after that.
        let task: Pin<Box<dyn Future<Output = ()> + Send + 'static>> =
            unsafe { std::mem::transmute(task) };
        let me = token();
        let op = Arc::new(Op {
            st: Mutex::new(OpState {
                future: Some(task),
                driver: me,
                finished: false,
                panic: None,
            }),
            finished: Condvar::new(),
        });
        let bomb = AbortOnUnwind;
        drive(ctx, &op, me);
        let panic = op.wait_finished();
        std::mem::forget(bomb);
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        out.expect("a finished operation has its result")
    }

    /// A fan-out of `step` over `targets` (replica indexes, in preference order), to await
    /// in an operation that [`Engine::block_on`] drives.
    pub fn fan<T, F>(
        &self,
        what: &'static str,
        targets: Vec<usize>,
        how: How,
        measure: Measure,
        step: F,
    ) -> FanFuture<C, T, F>
    where
        T: Send + 'static,
        F: Fn(&C, &Replica) -> io::Result<T> + Send + Sync + 'static,
    {
        let slots = targets.iter().map(|_| Slot::Waiting).collect();
        FanFuture {
            fan: Arc::new(Fan {
                what,
                step,
                targets,
                how,
                measure,
                st: Mutex::new(FanState {
                    slots,
                    winner: None,
                }),
                changed: Condvar::new(),
                hedged: AtomicBool::new(false),
                _c: std::marker::PhantomData,
            }),
        }
    }
}

/// Where an operation's result goes: a slot on the stack of the thread that waits for it
/// (see [`Engine::block_on`]).
struct Out<T>(*mut Option<T>);

// SAFETY: the slot is written once, by whichever thread finishes the operation, and read
// by its owner only after that thread is done with it.
unsafe impl<T: Send> Send for Out<T> {}

/// Aborts the process if dropped while unwinding: see [`Engine::block_on`].
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::process::abort();
        }
    }
}

/// This thread's number as a driver (0 stands for a replica's worker).
fn token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

const WORKER: u64 = 0;

thread_local! {
    /// The fan-out the operation being polled on this thread waits on.
    static PENDING: RefCell<Option<Arc<dyn Drive>>> = const { RefCell::new(None) };
}

type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One operation: its future and which thread drives it.
struct Op {
    st: Mutex<OpState>,
    finished: Condvar,
}

struct OpState {
    /// Absent while being polled, and once finished.
    future: Option<Task>,
    driver: u64,
    finished: bool,
    panic: Option<Box<dyn Any + Send>>,
}

impl Op {
    fn is_driver(&self, me: u64) -> bool {
        let st = self.st.lock();
        st.driver == me && !st.finished
    }

    fn finish(&self, panic: Option<Box<dyn Any + Send>>) {
        let mut st = self.st.lock();
        st.finished = true;
        st.panic = panic;
        self.finished.notify_all();
    }

    fn wait_finished(&self) -> Option<Box<dyn Any + Send>> {
        let mut st = self.st.lock();
        while !st.finished {
            self.finished.wait(&mut st);
        }
        st.panic.take()
    }
}

/// Polls `op` and runs the fan-outs it waits on, for as long as `me` is its driver.
fn drive<C: Context>(ctx: &C, op: &Arc<Op>, me: u64) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        let mut task = {
            let mut st = op.st.lock();
            if st.driver != me || st.finished {
                return;
            }
            match st.future.take() {
                Some(t) => t,
                None => return,
            }
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx)));
        let pending = PENDING.with(|p| p.borrow_mut().take());
        match polled {
            Ok(Poll::Pending) => {
                let fan = pending.expect("an operation waits on fan-outs only");
                op.st.lock().future = Some(task);
                fan.run(ctx, op, me, true);
            }
            done => {
                let dropped =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(task)));
                let panic = done.err().or(dropped.err());
                if panic.is_some() {
                    error!("an operation panicked; its request gets EIO");
                }
                op.finish(panic);
                return;
            }
        }
    }
}

/// The state of one replica's step in a fan-out.
enum Slot<T> {
    Waiting,
    /// Run by driver `by` (inline) or by a worker ([`WORKER`]), begun in the replica's
    /// epoch `epoch`.
    Running {
        by: u64,
        epoch: u64,
    },
    Done(io::Result<T>),
    /// Given up by a read that was answered elsewhere first.
    Dropped,
    /// Its result went to the operation.
    Taken,
}

impl<T> Slot<T> {
    fn running_by(&self, who: u64) -> bool {
        matches!(self, Slot::Running { by, .. } if *by == who)
    }

    fn finished(&self) -> bool {
        !matches!(self, Slot::Waiting | Slot::Running { .. })
    }
}

struct FanState<T> {
    slots: Vec<Slot<T>>,
    /// With [`How::First`] or [`How::Until`]: the slot whose answer stands.
    winner: Option<usize>,
}

struct Fan<C, T, F> {
    what: &'static str,
    step: F,
    targets: Vec<usize>,
    how: How,
    measure: Measure,
    st: Mutex<FanState<T>>,
    changed: Condvar,
    hedged: AtomicBool,
    _c: std::marker::PhantomData<fn(&C)>,
}

/// A fan-out as the driver and the watchdog see it, whatever its mirror and its steps.
/// `ctx` is the mirror (a `C`).
trait Drive: Send + Sync {
    /// Runs the fan-out's steps (as driver `me` of `op` when `driver`, else as a helper)
    /// until it is complete, or `me` stops being the driver.
    fn run(self: Arc<Self>, ctx: &dyn Any, op: &Arc<Op>, me: u64, driver: bool);
    /// Gives up the step of `slot` that thread `by` runs: its replica stopped answering.
    /// Returns whether it was still running.
    fn abandon(&self, slot: usize, by: u64) -> bool;
    /// Tries the replicas not tried yet on this thread, and takes over the operation if
    /// one answers while the driver still waits for its own.
    fn hedge(self: Arc<Self>, ctx: &dyn Any, op: &Arc<Op>, me: u64);
    /// Whether this is a read that may be hedged, and has not been yet (it is from now).
    fn may_hedge(&self) -> bool;
}

fn mirror_of<C: Context>(ctx: &dyn Any) -> &C {
    ctx.downcast_ref::<C>()
        .expect("a fan-out runs for the mirror that made it")
}

impl<C, T, F> Fan<C, T, F>
where
    C: Context,
    T: Send + 'static,
    F: Fn(&C, &Replica) -> io::Result<T> + Send + Sync + 'static,
{
    fn complete(&self, st: &FanState<T>) -> bool {
        (self.how.first_answer() && st.winner.is_some()) || st.slots.iter().all(Slot::finished)
    }

    /// Claims the next slot to run for `by`: in a read only when no other is running.
    fn claim(&self, st: &mut FanState<T>, ctx: &C, by: u64, sequential: bool) -> Option<usize> {
        if sequential && st.slots.iter().any(|s| matches!(s, Slot::Running { .. })) {
            return None;
        }
        let i = st.slots.iter().position(|s| matches!(s, Slot::Waiting))?;
        let epoch = ctx.replicas()[self.targets[i]].live.epoch();
        st.slots[i] = Slot::Running { by, epoch };
        Some(i)
    }

    /// Records slot `i`'s result, if `by` still runs it.
    fn finish(&self, i: usize, by: u64, result: io::Result<T>) {
        let mut st = self.st.lock();
        if !st.slots[i].running_by(by) {
            return;
        }
        let answer = match &result {
            Ok(_) => true,
            Err(e) => !sys::is_fault(sys::errno(e)),
        };
        st.slots[i] = Slot::Done(result);
        if self.how.first_answer() && answer && st.winner.is_none() {
            st.winner = Some(i);
        }
        self.changed.notify_all();
    }

    /// What this thread, as `me`, registers with its steps for the watchdog.
    fn inline_steps(self: &Arc<Self>, op: &Arc<Op>, me: u64) -> Arc<InlineStep> {
        Arc::new(InlineStep {
            op: op.clone(),
            fan: self.clone(),
            at: AtomicU64::new(u64::MAX),
            by: me,
            rescued: AtomicBool::new(false),
        })
    }

    /// Runs slot `i` (claimed by `steps.by`) on this thread, or on its replica's workers
    /// when as many request threads as allowed are inside that replica.
    fn run_slot(self: &Arc<Self>, ctx: &C, steps: &Arc<InlineStep>, i: usize, limited: bool) {
        let r = &ctx.replicas()[self.targets[i]];
        let inline = if limited {
            match r.live.enter_inline() {
                Some(place) => Some(place),
                None => return self.to_worker(ctx, i),
            }
        } else {
            None
        };
        steps
            .at
            .store(InlineStep::pack(i, r.live.id), Ordering::Release);
        steps.rescued.store(false, Ordering::Release);
        let me = steps.by;
        let call = r.live.begin(self.what, Some(steps.clone()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.step)(ctx, r)))
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)));
        self.measure.record(r, call.end());
        drop(inline);
        self.finish(i, me, result);
    }

    /// Runs slot `i` on its replica's workers.
    fn to_worker(self: &Arc<Self>, ctx: &C, i: usize) {
        let target = self.targets[i];
        let epoch = ctx.replicas()[target].live.epoch();
        {
            let mut st = self.st.lock();
            if !matches!(st.slots[i], Slot::Waiting | Slot::Running { .. }) {
                return;
            }
            st.slots[i] = Slot::Running { by: WORKER, epoch };
        }
        let Some(arc) = ctx.engine().mirror() else {
            return self.finish(i, WORKER, Err(io::Error::from_raw_os_error(libc::EIO)));
        };
        let fan = self.clone();
        ctx.replicas()[target].live.run_later(move || {
            let r = &arc.replicas()[target];
            let result = if r.live.epoch() != epoch {
                Err(not_answering())
            } else {
                let call = r.live.begin(fan.what, None);
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (fan.step)(&arc, r)))
                        .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)));
                fan.measure.record(r, call.end());
                result
            };
            fan.finish(i, WORKER, result);
        });
    }

    /// Waits a tick for a slot run elsewhere; gives up the worker slots of replicas
    /// abandoned meanwhile.
    fn wait_change(&self, ctx: &C) {
        let mut st = self.st.lock();
        if self.complete(&st) {
            return;
        }
        self.changed.wait_for(&mut st, TICK);
        for (i, slot) in st.slots.iter_mut().enumerate() {
            if let Slot::Running { by: WORKER, epoch } = *slot
                && ctx.replicas()[self.targets[i]].live.epoch() != epoch
            {
                *slot = Slot::Done(Err(not_answering()));
            }
        }
    }

    fn take(&self) -> Outcome<T> {
        let mut st = self.st.lock();
        let winner = st.winner.map(|i| self.targets[i]);
        let results = st
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match std::mem::replace(s, Slot::Taken) {
                Slot::Done(r) => Some((self.targets[i], r)),
                other => {
                    *s = other;
                    None
                }
            })
            .collect();
        Outcome { results, winner }
    }
}

impl<C, T, F> Drive for Fan<C, T, F>
where
    C: Context,
    T: Send + 'static,
    F: Fn(&C, &Replica) -> io::Result<T> + Send + Sync + 'static,
{
    fn run(self: Arc<Self>, ctx: &dyn Any, op: &Arc<Op>, me: u64, driver: bool) {
        let ctx = mirror_of::<C>(ctx);
        let steps = self.inline_steps(op, me);
        if self.how == How::AtOnce {
            let rest: Vec<usize> = {
                let st = self.st.lock();
                st.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| matches!(s, Slot::Waiting))
                    .map(|(i, _)| i)
                    .skip(1)
                    .collect()
            };
            for i in rest {
                self.to_worker(ctx, i);
            }
        }
        loop {
            if driver && !op.is_driver(me) {
                return;
            }
            let next = {
                let mut st = self.st.lock();
                if self.complete(&st) {
                    return;
                }
                self.claim(&mut st, ctx, me, self.how.first_answer())
            };
            match next {
                Some(i) => self.run_slot(ctx, &steps, i, true),
                None => self.wait_change(ctx),
            }
        }
    }

    fn abandon(&self, slot: usize, by: u64) -> bool {
        let mut st = self.st.lock();
        if !st.slots[slot].running_by(by) {
            return false;
        }
        st.slots[slot] = Slot::Done(Err(not_answering()));
        self.changed.notify_all();
        true
    }

    fn hedge(self: Arc<Self>, ctx: &dyn Any, op: &Arc<Op>, me: u64) {
        let ctx = mirror_of::<C>(ctx);
        let steps = self.inline_steps(op, me);
        loop {
            let next = {
                let mut st = self.st.lock();
                if self.complete(&st) {
                    return;
                }
                self.claim(&mut st, ctx, me, false)
            };
            let Some(i) = next else { return };
            self.run_slot(ctx, &steps, i, false);
            let mut st = self.st.lock();
            match st.winner {
                Some(w) if w == i => {
                    // Answered here first: if the driver still waits inside its own
                    // replica, this thread finishes the operation.
                    let mut o = op.st.lock();
                    if o.finished {
                        return;
                    }
                    let Some(j) = st.slots.iter().position(|s| s.running_by(o.driver)) else {
                        return;
                    };
                    st.slots[j] = Slot::Dropped;
                    o.driver = me;
                    drop(o);
                    drop(st);
                    drive(ctx, op, me);
                    return;
                }
                Some(_) => return,
                None => {}
            }
        }
    }

    fn may_hedge(&self) -> bool {
        self.how == How::First && !self.hedged.swap(true, Ordering::AcqRel)
    }
}

/// What a fan-out's replicas answered: each finished step's result (in the targets'
/// order), and with [`How::First`] or [`How::Until`] the replica whose answer stands.
pub struct Outcome<T> {
    pub results: Vec<(usize, io::Result<T>)>,
    pub winner: Option<usize>,
}

/// A fan-out awaited by an operation.
pub struct FanFuture<C, T, F> {
    fan: Arc<Fan<C, T, F>>,
}

impl<C, T, F> Future for FanFuture<C, T, F>
where
    C: Context,
    T: Send + 'static,
    F: Fn(&C, &Replica) -> io::Result<T> + Send + Sync + 'static,
{
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Outcome<T>> {
        let complete = {
            let st = self.fan.st.lock();
            self.fan.complete(&st)
        };
        if complete {
            return Poll::Ready(self.fan.take());
        }
        let fan: Arc<dyn Drive> = self.fan.clone();
        PENDING.with(|p| *p.borrow_mut() = Some(fan));
        Poll::Pending
    }
}

/// The steps a thread runs inline for one fan-out, as the watchdog sees them.
struct InlineStep {
    op: Arc<Op>,
    fan: Arc<dyn Drive>,
    /// The slot run now and its replica's liveness id, packed (see [`InlineStep::pack`]).
    at: AtomicU64,
    by: u64,
    rescued: AtomicBool,
}

impl InlineStep {
    /// A slot (fan-outs are short) and a liveness id in one word.
    fn pack(slot: usize, live: u64) -> u64 {
        (live << 8) | (slot as u64 & 0xff)
    }

    /// The step's replica, `live`, stopped answering: the step is given up and, if its
    /// thread drives the operation, this thread drives it from now on.
    fn rescue<C: Context>(&self, ctx: &C, live: u64) {
        let at = self.at.load(Ordering::Acquire);
        if at >> 8 != live || !self.fan.abandon((at & 0xff) as usize, self.by) {
            return;
        }
        let me = token();
        {
            let mut st = self.op.st.lock();
            if st.finished || st.driver != self.by {
                return;
            }
            st.driver = me;
        }
        self.fan.clone().run(ctx, &self.op, me, true);
        drive(ctx, &self.op, me);
    }
}

/// Starts the watchdog of mirror `ctx`; it stops when the mirror is dropped.
pub fn watch<C: Context>(ctx: &Arc<C>) {
    let weak = Arc::downgrade(ctx);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while let Some(ctx) = weak.upgrade() {
                look(&ctx);
                drop(ctx);
                std::thread::sleep(TICK);
            }
        })
        .expect("spawn the watchdog thread");
}

/// Runs `f` on a thread of its own (a rescue or a hedge).
fn assist<C: Context>(ctx: &Arc<C>, name: &str, f: impl FnOnce(&C) + Send + 'static) {
    let ctx = ctx.clone();
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&ctx))
    {
        warn!(error = %e, "cannot start a thread to finish a request");
    }
}

/// One look at every call under way.
fn look<C: Context>(ctx: &Arc<C>) {
    let engine = ctx.engine();
    let d = engine.timeout;
    let calls = liveness::calls();
    let replicas = ctx.replicas();
    let index_of = |live: u64| replicas.iter().position(|r| r.live.id == live);
    let mut oldest: Vec<Option<(Duration, &'static str)>> = vec![None; replicas.len()];
    for c in &calls {
        if let Some(i) = index_of(c.live)
            && oldest[i].is_none_or(|(age, _)| c.age > age)
        {
            oldest[i] = Some((c.age, c.what));
        }
    }
    for (r, oldest) in replicas.iter().zip(&oldest) {
        let Some((age, what)) = *oldest else { continue };
        let silent = r.live.silent_for();
        if !r.live.stuck()
            && ((age >= d && silent >= d) || r.live.exhausted(d))
            && r.live.declare_stuck()
        {
            ctx.not_answering(r.index, what, age.min(silent));
        }
        if age >= d / 4 && silent >= d / 4 {
            r.live.hurry_pulse();
        }
    }
    for c in calls {
        let Some(i) = index_of(c.live) else { continue };
        let Some(step) = c.payload.and_then(|p| p.downcast::<InlineStep>().ok()) else {
            continue;
        };
        let r = &replicas[i];
        if r.live.stuck() {
            if !step.rescued.swap(true, Ordering::AcqRel) {
                let live = c.live;
                assist(ctx, "rescue", move |ctx| step.rescue(ctx, live));
            }
        } else if c.age >= engine.hedge_delay(r) && step.fan.may_hedge() {
            let me_op = step.op.clone();
            let fan = step.fan.clone();
            assist(ctx, "hedge", move |ctx| fan.hedge(ctx, &me_op, token()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, Sender};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    struct Test {
        replicas: Vec<Replica>,
        engine: Engine<Test>,
        not_answering: Mutex<Vec<usize>>,
    }

    impl Context for Test {
        fn replicas(&self) -> &[Replica] {
            &self.replicas
        }
        fn engine(&self) -> &Engine<Test> {
            &self.engine
        }
        fn not_answering(&self, index: usize, _: &'static str, _: Duration) {
            self.not_answering.lock().push(index);
        }
    }

    fn mirror(dir: &tempfile::TempDir, n: usize, timeout: Duration) -> Arc<Test> {
        let t = Arc::new_cyclic(|me| Test {
            replicas: (0..n)
                .map(|i| {
                    let root = std::fs::File::open(dir.path()).unwrap();
                    Replica::new(i, dir.path(), root.into())
                })
                .collect(),
            engine: Engine::new(me.clone(), timeout),
            not_answering: Mutex::new(Vec::new()),
        });
        watch(&t);
        t
    }

    /// A gate steps wait at until it is opened.
    fn gate() -> (Sender<()>, Receiver<()>) {
        crossbeam_channel::bounded(0)
    }

    #[test]
    fn a_fan_out_runs_on_every_replica_and_reports_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = mirror(&dir, 3, Duration::from_secs(5));
        for how in [How::InTurn, How::AtOnce] {
            let out = t.engine.block_on(&t, async {
                t.engine
                    .fan("test", vec![2, 0, 1], how, Measure::Write, |_, r| {
                        Ok(r.index * 10)
                    })
                    .await
            });
            let got: Vec<(usize, usize)> = out
                .results
                .into_iter()
                .map(|(i, r)| (i, r.unwrap()))
                .collect();
            assert_eq!(got, vec![(2, 20), (0, 0), (1, 10)]);
        }
    }

    #[test]
    fn a_read_takes_the_first_answer_and_skips_faults() {
        let dir = tempfile::tempdir().unwrap();
        let t = mirror(&dir, 3, Duration::from_secs(5));
        let out = t.engine.block_on(&t, async {
            t.engine
                .fan("read", vec![0, 1, 2], How::First, Measure::Read, |_, r| {
                    if r.index == 0 {
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    } else {
                        Ok(r.index)
                    }
                })
                .await
        });
        assert_eq!(out.winner, Some(1));
        assert_eq!(out.results.len(), 2, "replica 2 was never asked");
    }

    #[test]
    fn a_step_that_never_returns_is_abandoned_and_the_request_finished_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_millis(300);
        let t = mirror(&dir, 2, timeout);
        let (open, shut) = gate();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let returned = Arc::new(AtomicUsize::new(0));
        let r2 = returned.clone();
        let started = Instant::now();
        // The caller: a step on replica 1 hangs on its thread.
        let caller = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.engine.block_on(&t, async {
                    let first = t
                        .engine
                        .fan(
                            "write",
                            vec![0, 1],
                            How::InTurn,
                            Measure::Write,
                            move |_, r| {
                                if r.index == 1 {
                                    let _ = shut.recv();
                                    r2.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(r.index)
                            },
                        )
                        .await;
                    // The operation goes on after its fan-out, on whichever thread.
                    let second = t
                        .engine
                        .fan("more", vec![0], How::InTurn, Measure::Write, |_, _| Ok(99))
                        .await;
                    // As a request replies.
                    done_tx.send((first, second)).unwrap();
                })
            })
        };
        // The operation finishes within the deadline plus a little, while the thread that
        // began it is still inside replica 1.
        let (first, second) = done.recv_timeout(Duration::from_secs(5)).expect("finished");
        assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
        assert_eq!(*t.not_answering.lock(), vec![1]);
        let errnos: Vec<(usize, Option<i32>)> = first
            .results
            .iter()
            .map(|(i, r)| (*i, r.as_ref().err().and_then(|e| e.raw_os_error())))
            .collect();
        assert_eq!(errnos, vec![(0, None), (1, Some(libc::ETIMEDOUT))]);
        assert_eq!(second.results[0].1.as_ref().unwrap(), &99);
        assert!(
            !caller.is_finished(),
            "the caller waits while its thread is held"
        );
        assert!(
            !t.replicas[1].live.revive(),
            "not back while a call is in it"
        );
        open.send(()).unwrap();
        caller.join().unwrap();
        assert_eq!(returned.load(Ordering::SeqCst), 1);
        assert!(t.replicas[1].live.revive());
    }

    #[test]
    fn a_slow_read_is_answered_by_another_replica() {
        let dir = tempfile::tempdir().unwrap();
        let t = mirror(&dir, 2, Duration::from_secs(30));
        let (open, shut) = gate();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let started = Instant::now();
        let caller = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.engine.block_on(&t, async {
                    let out = t
                        .engine
                        .fan(
                            "read",
                            vec![0, 1],
                            How::First,
                            Measure::Read,
                            move |_, r| {
                                if r.index == 0 {
                                    let _ = shut.recv();
                                }
                                Ok(r.index)
                            },
                        )
                        .await;
                    done_tx.send(out.winner).unwrap();
                })
            })
        };
        let winner = done.recv_timeout(Duration::from_secs(5)).expect("answered");
        assert_eq!(winner, Some(1));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(t.not_answering.lock().is_empty(), "slow is not failed");
        open.send(()).unwrap();
        caller.join().unwrap();
    }
}
