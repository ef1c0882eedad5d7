//! Following the traced processes with ptrace once they run: their events (fork, vfork, exec,
//! clone, signals, the exit stop), the threads held at the exit, the timeout's watchdog and
//! the release or reaping of each. See the module above for the invariants.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    libc,
    sys::{
        ptrace::{self, Event as PtraceEvent, Options},
        signal::{self, SigHandler, Signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::error::{Error, Result};

use super::{ExitStatus, Groups, WAIT_ALL};

/// What the traced processes did next.
#[derive(Debug)]
pub enum Event {
    /// A thread of process `pid` stopped at `PTRACE_EVENT_EXIT` for the process's exit: read
    /// it now ([`Running::live_threads`]), then let it go ([`Running::release`]; for the
    /// program itself, [`Running::finish`]).
    ExitStop { pid: u32, tid: u32 },
    /// A followed process started another: both are held, the child before its first
    /// instruction, until [`Running::resume`]. With `shares_memory` (vfork) the child runs in
    /// its parent's memory until it execs.
    Forked {
        parent: u32,
        /// The thread of `parent` that forked, held at its fork stop: resume this one.
        parent_thread: u32,
        child: u32,
        shares_memory: bool,
    },
    /// Followed process `pid` exec'd a new program; it is held until [`Running::resume`] (or
    /// [`Running::detach`]).
    Exec { pid: u32 },
    /// A followed child is gone (after its exit stop, or without one).
    ChildExited { pid: u32, status: ExitStatus },
    /// The program is gone without an exit stop (killed by SIGKILL, for example).
    Exited(ExitStatus),
    /// Thread `tid` of process `pid` is held before a `ptrace` call that needs a process we
    /// trace (the entry program signalled it: `memleak_common::HANDOVER_SIGNAL`), or got that
    /// signal from elsewhere: the tracer's HANDOVERS map says which. Then [`Running::detach`]
    /// the process it wants and [`Running::resume`] the thread (unless it was detached with
    /// it), or [`Running::pass_on`] a signal that was not ours.
    PtraceCall { pid: u32, tid: u32 },
}

/// A thread of a process that is exiting: alive when the exit began, or still unaccounted for.
#[derive(Clone, Debug)]
pub struct LiveThread {
    pub tid: u32,
    pub state: ThreadState,
    /// Its stack pointer when it started (or, for a thread that had not run yet, the stack its
    /// clone gave it), which locates its stack (`None` for the main thread and when unknown).
    pub start_sp: Option<u64>,
}

/// What became of a thread once its process began to exit.
#[derive(Clone, Debug)]
pub enum ThreadState {
    /// Held at its exit stop: its registers, which may hold pointers.
    Stopped(Box<libc::user_regs_struct>),
    /// It ended unseen, and its registers are those of the last stop it was resumed from
    /// (a clone event, a signal): killed by the exit as it was resumed, it ran nothing since,
    /// and its registers and frames are as they were there. (Had it instead run on and
    /// ended by itself as the process exited, what it held then is scanned as of that stop,
    /// which can only keep more memory reachable.)
    LastSeen(Box<libc::user_regs_struct>),
    /// It ended before its registers could be read at any stop (killed before its first
    /// instruction, say): its registers hold no pointer.
    Gone,
    /// It did not reach its exit stop in time, or its registers could not be read there: a
    /// root that is missing from the scan.
    Unresponsive,
}

/// How long the other threads get to reach their exit stops once the process is exiting.
/// They are already killed, so they take microseconds; one stuck in the kernel is reported.
const THREADS_DEADLINE: Duration = Duration::from_secs(2);

/// One traced process: the program, or a child it started.
#[derive(Debug, Default)]
struct Traced {
    exit_stop_seen: bool,
    /// Threads held at their exit stops (the process's exit stop first), until released.
    held: Vec<Pid>,
    /// Threads other than the main one that have not exited, with their stack pointer at
    /// their first stop (which locates their stack).
    threads: BTreeMap<Pid, Option<u64>>,
    /// Threads that ended on their own (`SYS_exit`) while the process went on.
    exited: BTreeSet<Pid>,
    /// Threads created (their parent's clone event seen) that have not run yet, with the
    /// stack the clone gave them: such a thread's start arguments lie in its stack mapping
    /// (glibc's thread descriptor), where nothing else may point to them.
    unstarted: BTreeMap<Pid, u64>,
    /// Each thread's registers at the last stop it was resumed from. A resume sent as the
    /// process's exit kills the thread reaches its exit stop instead, whatever was checked
    /// before it (the kill can land between any check and the resume, and a loaded machine
    /// can preempt the tracer right there): the thread then ends unseen, having run no
    /// instruction since that stop, and this is how it was when it died
    /// ([`ThreadState::LastSeen`]).
    last_stop: BTreeMap<Pid, Box<libc::user_regs_struct>>,
}

/// The traced program, and the children it started when they are followed.
pub struct Running {
    /// The program.
    root: Pid,
    /// Every traced process not yet reaped, the program included.
    processes: BTreeMap<Pid, Traced>,
    /// Children a fork or vfork event named, with their parent and whether they share its
    /// memory, whose first stop has not been seen yet.
    announced: BTreeMap<Pid, (Pid, Pid, bool)>,
    /// Children whose first stop came before their parent's fork event.
    newborn: BTreeSet<Pid>,
    /// The program was reaped: nothing left to clean up on drop.
    reaped: bool,
    /// Where an isolated child's stdout and stderr went.
    output: Option<OwnedFd>,
    watchdog: Option<Watchdog>,
    _interrupts: Option<IgnoreInterrupts>,
    /// An isolated child's process group, registered while it runs.
    group: Option<(Arc<Groups>, Pid)>,
}

impl Drop for Running {
    /// Processes abandoned on an error path are killed and reaped, not left stopped.
    fn drop(&mut self) {
        if let Some((groups, group)) = self.group.take() {
            groups.remove(group);
        }
        if self.reaped && self.processes.is_empty() {
            return;
        }
        for (&pid, traced) in &mut self.processes {
            let _ = signal::kill(pid, Signal::SIGKILL);
            for tid in traced.held.drain(..) {
                end(tid);
            }
        }
        if !self.reaped {
            while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WAIT_ALL)) {
                if matches!(status, WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) if pid == self.root)
                {
                    break;
                }
            }
        }
    }
}

impl Running {
    /// The program `root`, seized at its gate and about to exec (see [`super::Gated::release`]):
    /// an isolated one has its output in `output` and its process group registered in `group`;
    /// one that shares our terminal has Ctrl-C and Ctrl-\ ignored by us while it runs.
    pub(super) fn new(
        root: Pid,
        output: Option<OwnedFd>,
        isolated: bool,
        group: Option<(Arc<Groups>, Pid)>,
    ) -> Self {
        Self {
            root,
            processes: BTreeMap::from([(root, Traced::default())]),
            announced: BTreeMap::new(),
            newborn: BTreeSet::new(),
            reaped: false,
            output,
            watchdog: None,
            _interrupts: (!isolated).then(IgnoreInterrupts::install),
            group,
        }
    }

    /// Kills `target` (a process, or a negative pid's process group) after `timeout`.
    pub(super) fn start_watchdog(&mut self, target: Pid, timeout: Duration) {
        self.watchdog = Some(Watchdog::start(target, timeout));
    }

    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.root.as_raw() as u32
    }

    /// Seizes every thread of a running process (see the module's invariants), so that its
    /// exit stops it with its memory intact ([`Event::ExitStop`]). Threads created while
    /// this runs are seized by the ones already seized, or found on the next pass over
    /// /proc/PID/task. Fails (with the process left as it was) when another tracer has it.
    pub fn seize(pid: u32) -> Result<Self> {
        let root = Pid::from_raw(pid as i32);
        let options = Options::PTRACE_O_TRACEEXIT
            | Options::PTRACE_O_TRACECLONE
            | Options::PTRACE_O_TRACEEXEC;
        let mut seized: BTreeSet<Pid> = BTreeSet::new();
        loop {
            let new: Vec<Pid> = tasks_of(root)
                .into_iter()
                .filter(|tid| !seized.contains(tid))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, options) {
                    Ok(()) => {
                        seized.insert(tid);
                    }
                    // Gone since it was listed.
                    Err(Errno::ESRCH) => {}
                    Err(source) => {
                        for &tid in &seized {
                            detach_thread(tid);
                        }
                        return Err(Error::Ptrace {
                            operation: "PTRACE_SEIZE",
                            pid: tid.as_raw(),
                            source,
                        });
                    }
                }
            }
        }
        let traced = Traced {
            threads: seized
                .iter()
                .filter(|&&tid| tid != root)
                .map(|&tid| (tid, None))
                .collect(),
            ..Traced::default()
        };
        Ok(Self {
            root,
            processes: BTreeMap::from([(root, traced)]),
            announced: BTreeMap::new(),
            newborn: BTreeSet::new(),
            reaped: false,
            output: None,
            watchdog: None,
            _interrupts: None,
            group: None,
        })
    }

    /// Handles every wait status pending, without blocking; returns the events the caller has
    /// something to do about (a seized process: [`Running::seize`]).
    pub fn poll_events(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WAIT_ALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(events),
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Ptrace {
                        operation: "waitpid",
                        pid: self.root.as_raw(),
                        source,
                    });
                }
            };
            if let Some(event) = self.handle(status)? {
                if matches!(event, Event::Exited(_)) {
                    self.reaped = true;
                }
                events.push(event);
            }
        }
    }

    /// Detaches every thread of a seized process: it runs on as if never traced (a thread
    /// held at a stop is let go with it). One held at its exit stop is let finish instead, and
    /// reaped as a tracee, so that its parent is told of its end at once.
    pub fn let_go(mut self) {
        if self
            .processes
            .get(&self.root)
            .is_some_and(|traced| traced.exit_stop_seen)
        {
            let _ = self.finish();
            self.reaped = true;
            return;
        }
        // Stops already reported are handled first, so no signal is swallowed by the detach.
        let _ = self.poll_events();
        let root = self.pid();
        self.detach(root);
        self.reaped = true;
    }

    /// Runs the processes until something needs the caller: an exit stop, a fork or exec of a
    /// followed process, a child's end, or the program gone without an exit stop.
    pub fn wait_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.step()? {
                match &event {
                    Event::Exited(_) => self.reaped = true,
                    // The program is done; reading it at its exit stop must not race the
                    // timeout.
                    Event::ExitStop { pid, .. } if *pid == self.pid() => {
                        if let Some(watchdog) = &mut self.watchdog {
                            watchdog.cancel();
                        }
                    }
                    _ => {}
                }
                return Ok(event);
            }
        }
    }

    /// Runs the program until its exit stop, or until it is gone (for callers that follow no
    /// children: those events do not happen).
    pub fn wait_exit_stop(&mut self) -> Result<Event> {
        loop {
            match self.wait_event()? {
                Event::ExitStop { pid, .. } if pid != self.pid() => self.release(pid),
                event @ (Event::ExitStop { .. } | Event::Exited(_)) => return Ok(event),
                Event::Forked {
                    parent_thread,
                    child,
                    ..
                } => {
                    self.resume(parent_thread);
                    self.resume(child);
                }
                Event::Exec { pid } => self.resume(pid),
                Event::PtraceCall { tid, .. } => self.pass_on(tid),
                Event::ChildExited { .. } => {}
            }
        }
    }

    /// After the program was reaped: whether processes of its (isolated) process group are
    /// still alive 100 ms later (nextest's leak timeout); they are killed then. Always false
    /// for a command that shares our process group.
    pub fn kill_left_behind(&mut self) -> bool {
        if !self.reaped {
            return false;
        }
        let Some((groups, group)) = self.group.take() else {
            return false;
        };
        groups.remove(group);
        let target = Pid::from_raw(-group.as_raw());
        let deadline = Instant::now() + Duration::from_millis(100);
        while signal::kill(target, None).is_ok() {
            if Instant::now() >= deadline {
                let _ = signal::kill(target, Signal::SIGKILL);
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Whether the timeout killed the process.
    pub fn timed_out(&self) -> bool {
        self.watchdog.as_ref().is_some_and(Watchdog::fired)
    }

    /// What an isolated child wrote to stdout and stderr so far (lossy UTF-8).
    pub fn output(&self) -> Option<String> {
        use std::io::{Read as _, Seek as _};
        let fd = self.output.as_ref()?.try_clone().ok()?;
        let mut file = std::fs::File::from(fd);
        let mut bytes = Vec::new();
        file.rewind().ok()?;
        file.read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The followed children that have not been reaped.
    pub fn children(&self) -> Vec<u32> {
        self.processes
            .keys()
            .filter(|&&pid| pid != self.root)
            .map(|pid| pid.as_raw() as u32)
            .collect()
    }

    /// Lets a process held at a fork or exec stop (or a child held at its first stop) go on.
    pub fn resume(&mut self, pid: u32) {
        resume(Pid::from_raw(pid as i32), None);
    }

    /// Lets a thread held at [`Event::PtraceCall`] go on with its signal, as if not traced.
    pub fn pass_on(&mut self, tid: u32) {
        let signal = Signal::try_from(memleak_common::HANDOVER_SIGNAL as i32).ok();
        resume(Pid::from_raw(tid as i32), signal);
    }

    /// Stops following process `pid`: every thread of it is detached and runs on untraced.
    pub fn detach(&mut self, pid: u32) {
        let pid = Pid::from_raw(pid as i32);
        let Some(traced) = self.processes.remove(&pid) else {
            return;
        };
        let mut tids: BTreeSet<Pid> = traced.threads.keys().copied().collect();
        tids.insert(pid);
        tids.extend(tasks_of(pid));
        for tid in tids {
            detach_thread(tid);
        }
    }

    /// Every thread of process `pid` alive when it began to exit, the stopped one first, each
    /// held at its exit stop with its registers where it could be. Call after
    /// [`Event::ExitStop`] for that process.
    ///
    /// The exit killed the other threads; each stops at its own `PTRACE_EVENT_EXIT` before it
    /// is gone (measured: microseconds after the process's exit stop, or before it), except a
    /// thread that was already at the exit stop of its own `exit`: the kill wakes it from that
    /// stop, and it is reaped instead ([`ThreadState::Gone`]). A thread that does not get
    /// anywhere within [`THREADS_DEADLINE`] is [`ThreadState::Unresponsive`].
    pub fn live_threads(&mut self, pid: u32) -> Vec<LiveThread> {
        let pid = Pid::from_raw(pid as i32);
        let Some(traced) = self.processes.get_mut(&pid) else {
            return Vec::new();
        };
        let Some(&stopped) = traced.held.first() else {
            return Vec::new();
        };
        let registers = |tid: Pid| match ptrace::getregs(tid) {
            Ok(regs) => ThreadState::Stopped(Box::new(regs)),
            Err(_) => ThreadState::Unresponsive,
        };
        let start_sp = |traced: &Traced, tid: Pid| {
            traced
                .threads
                .get(&tid)
                .copied()
                .flatten()
                .or_else(|| traced.unstarted.get(&tid).copied())
        };
        let mut live = vec![LiveThread {
            tid: stopped.as_raw() as u32,
            state: registers(stopped),
            start_sp: start_sp(traced, stopped),
        }];
        // The threads we know of, and any whose first stop has not been seen yet.
        let mut waiting: BTreeSet<Pid> = traced.threads.keys().copied().collect();
        waiting.insert(pid);
        waiting.extend(tasks_of(pid));
        waiting.extend(traced.unstarted.keys().copied());
        waiting.remove(&stopped);
        // (A pid of 0 or less would wait for other processes' children.)
        waiting.retain(|tid| tid.as_raw() > 0 && !traced.exited.contains(tid));

        let deadline = Instant::now() + THREADS_DEADLINE;
        while !waiting.is_empty() && Instant::now() < deadline {
            for tid in waiting.clone() {
                let state = match waitpid(tid, Some(WAIT_ALL | WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => continue,
                    Ok(WaitStatus::PtraceEvent(_, _, event))
                        if event == PtraceEvent::PTRACE_EVENT_EXIT as i32 =>
                    {
                        traced.held.push(tid);
                        registers(tid)
                    }
                    // Reaped, or not ours to wait for any more: it no longer exists.
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => {
                        match traced.last_stop.remove(&tid) {
                            Some(regs) => ThreadState::LastSeen(regs),
                            None => ThreadState::Gone,
                        }
                    }
                    Ok(_) => {
                        // Some other stop on its way out: it is killed already, let it go on.
                        resume(tid, None);
                        continue;
                    }
                };
                waiting.remove(&tid);
                live.push(LiveThread {
                    tid: tid.as_raw() as u32,
                    state,
                    start_sp: start_sp(traced, tid),
                });
            }
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        live.extend(waiting.into_iter().map(|tid| LiveThread {
            tid: tid.as_raw() as u32,
            state: ThreadState::Unresponsive,
            start_sp: start_sp(traced, tid),
        }));
        live
    }

    /// Lets a process held at its exit stop finish (a child: its end comes as
    /// [`Event::ChildExited`]).
    pub fn release(&mut self, pid: u32) {
        if let Some(traced) = self.processes.get_mut(&Pid::from_raw(pid as i32)) {
            for tid in std::mem::take(&mut traced.held) {
                end(tid);
            }
        }
    }

    /// Lets the program finish and reaps it; children still followed are detached and run on.
    pub fn finish(&mut self) -> Result<ExitStatus> {
        let root = self.pid();
        if let Some(traced) = self.processes.get_mut(&self.root) {
            traced.exit_stop_seen = true;
        }
        self.release(root);
        loop {
            match self.step()? {
                Some(Event::Exited(status)) => {
                    self.reaped = true;
                    for child in self.children() {
                        self.detach(child);
                    }
                    return Ok(status);
                }
                Some(Event::Forked {
                    parent_thread,
                    child,
                    ..
                }) => {
                    self.resume(parent_thread);
                    self.resume(child);
                }
                Some(Event::Exec { pid }) => self.resume(pid),
                Some(Event::PtraceCall { tid, .. }) => self.pass_on(tid),
                Some(Event::ExitStop { pid, .. }) => self.release(pid),
                Some(Event::ChildExited { .. }) | None => {}
            }
        }
    }

    /// Waits for and handles one wait status. Returns an event when the caller has something
    /// to do.
    fn step(&mut self) -> Result<Option<Event>> {
        let status = match waitpid(Pid::from_raw(-1), Some(WAIT_ALL)) {
            Ok(status) => status,
            Err(Errno::EINTR) => return Ok(None),
            Err(source) => {
                return Err(Error::Ptrace {
                    operation: "waitpid",
                    pid: self.root.as_raw(),
                    source,
                });
            }
        };
        self.handle(status)
    }

    /// Handles one wait status (see [`Running::step`]).
    fn handle(&mut self, status: WaitStatus) -> Result<Option<Event>> {
        let Some(tid) = status.pid() else {
            return Ok(None);
        };
        // A process we have not seen: a child's first stop, before or after its parent's
        // fork event.
        if !self.processes.contains_key(&tid)
            && matches!(
                status,
                WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..)
            )
            && thread_group_of(tid) == Some(tid)
        {
            self.processes.insert(tid, Traced::default());
            return Ok(match self.announced.remove(&tid) {
                Some((parent, thread, shares_memory)) => Some(Event::Forked {
                    parent: parent.as_raw() as u32,
                    parent_thread: thread.as_raw() as u32,
                    child: tid.as_raw() as u32,
                    shares_memory,
                }),
                None => {
                    self.newborn.insert(tid);
                    None
                }
            });
        }
        let tgid = if self.processes.contains_key(&tid) {
            tid
        } else {
            thread_group_of(tid).unwrap_or(self.root)
        };
        // The thread's registers at this stop, read once for all that needs them below.
        let regs = match status {
            WaitStatus::PtraceEvent(..)
            | WaitStatus::Stopped(..)
            | WaitStatus::PtraceSyscall(_)
                if self.processes.contains_key(&tgid) =>
            {
                ptrace::getregs(tid).ok()
            }
            _ => None,
        };
        if let Some(traced) = self.processes.get_mut(&tgid)
            && tid != tgid
            && !traced.exit_stop_seen
            && !traced.threads.contains_key(&tid)
            && matches!(
                status,
                WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..)
            )
        {
            // A new thread's first stop: where its stack is.
            traced.threads.insert(tid, regs.map(|regs| regs.rsp));
            traced.unstarted.remove(&tid);
        }
        // Any stop it will be resumed from: how it was there, should the exit's kill meet
        // the resume (see `Traced::last_stop`).
        if let Some(traced) = self.processes.get_mut(&tgid)
            && !traced.exit_stop_seen
            && match status {
                WaitStatus::PtraceEvent(_, _, event) => {
                    event != PtraceEvent::PTRACE_EVENT_EXIT as i32
                        && event != PtraceEvent::PTRACE_EVENT_EXEC as i32
                }
                WaitStatus::Stopped(..) | WaitStatus::PtraceSyscall(_) => true,
                _ => false,
            }
        {
            match regs {
                Some(regs) => traced.last_stop.insert(tid, Box::new(regs)),
                None => traced.last_stop.remove(&tid),
            };
        }
        match status {
            WaitStatus::Exited(pid, code) if pid == self.root => {
                self.processes.remove(&pid);
                Ok(Some(Event::Exited(ExitStatus::Exited { code })))
            }
            WaitStatus::Signaled(pid, signal, core_dumped) if pid == self.root => {
                self.processes.remove(&pid);
                Ok(Some(Event::Exited(ExitStatus::Signaled {
                    signal: signal.as_str().to_string(),
                    core_dumped,
                })))
            }
            WaitStatus::Exited(pid, code) if self.processes.remove(&pid).is_some() => {
                Ok(Some(Event::ChildExited {
                    pid: pid.as_raw() as u32,
                    status: ExitStatus::Exited { code },
                }))
            }
            WaitStatus::Signaled(pid, signal, core_dumped)
                if self.processes.remove(&pid).is_some() =>
            {
                Ok(Some(Event::ChildExited {
                    pid: pid.as_raw() as u32,
                    status: ExitStatus::Signaled {
                        signal: signal.as_str().to_string(),
                        core_dumped,
                    },
                }))
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => Ok(None),
            WaitStatus::PtraceEvent(tid, _, event)
                if event == PtraceEvent::PTRACE_EVENT_EXIT as i32 =>
            {
                let process_exit = self.processes.contains_key(&tgid) && is_process_exit(regs);
                let Some(traced) = self.processes.get_mut(&tgid) else {
                    end(tid);
                    return Ok(None);
                };
                if !traced.exit_stop_seen && process_exit {
                    traced.exit_stop_seen = true;
                    traced.held.push(tid);
                    return Ok(Some(Event::ExitStop {
                        pid: tgid.as_raw() as u32,
                        tid: tid.as_raw() as u32,
                    }));
                }
                traced.threads.remove(&tid);
                traced.last_stop.remove(&tid);
                if !traced.exit_stop_seen {
                    traced.exited.insert(tid);
                }
                end(tid);
                Ok(None)
            }
            WaitStatus::PtraceEvent(parent, _, event)
                if event == PtraceEvent::PTRACE_EVENT_FORK as i32
                    || event == PtraceEvent::PTRACE_EVENT_VFORK as i32 =>
            {
                let shares_memory = event == PtraceEvent::PTRACE_EVENT_VFORK as i32;
                // The child's pid, unless a kill has moved the parent on to its exit stop
                // (whose message is the exit code).
                let child = ptrace::getevent(parent)
                    .ok()
                    .filter(|_| !at_exit_stop(parent))
                    .map(|child| Pid::from_raw(child as i32));
                match child {
                    Some(child) if self.newborn.remove(&child) => Ok(Some(Event::Forked {
                        parent: tgid.as_raw() as u32,
                        parent_thread: parent.as_raw() as u32,
                        child: child.as_raw() as u32,
                        shares_memory,
                    })),
                    Some(child) => {
                        // The parent waits here until the child's first stop is seen, so that
                        // the child starts from its parent's state at the fork.
                        self.announced.insert(child, (tgid, parent, shares_memory));
                        Ok(None)
                    }
                    None => {
                        resume(parent, None);
                        Ok(None)
                    }
                }
            }
            WaitStatus::PtraceEvent(_, _, event)
                if event == PtraceEvent::PTRACE_EVENT_EXEC as i32 =>
            {
                // After an exec the process's other threads are gone, and its leader's pid is
                // the exec'ing thread's.
                if let Some(traced) = self.processes.get_mut(&tgid) {
                    traced.threads.clear();
                    traced.exited.clear();
                    traced.unstarted.clear();
                    traced.last_stop.clear();
                }
                Ok(Some(Event::Exec {
                    pid: tgid.as_raw() as u32,
                }))
            }
            WaitStatus::PtraceEvent(tid, signal, event) if event == libc::PTRACE_EVENT_STOP => {
                if matches!(
                    signal,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                ) {
                    // Group stop: stay stopped (as without a tracer) but keep reporting.
                    // SAFETY: PTRACE_LISTEN on a seized tracee in group-stop.
                    unsafe { libc::ptrace(libc::PTRACE_LISTEN, tid.as_raw(), 0, 0) };
                } else {
                    resume(tid, None);
                }
                Ok(None)
            }
            WaitStatus::PtraceEvent(parent, _, event)
                if event == PtraceEvent::PTRACE_EVENT_CLONE as i32 =>
            {
                // A new thread: where its stack is, until it runs. The message is the new
                // thread's id only while the parent is still at this stop: a kill since has
                // moved it on to its exit stop, whose message is the exit code.
                if let Ok(child) = ptrace::getevent(parent)
                    && !at_exit_stop(parent)
                    && let Some(traced) = self.processes.get_mut(&tgid)
                {
                    let child = Pid::from_raw(child as i32);
                    if !traced.threads.contains_key(&child)
                        && let Some(sp) = regs.and_then(|regs| clone_stack(parent, &regs))
                    {
                        traced.unstarted.insert(child, sp);
                    }
                }
                resume(parent, None);
                Ok(None)
            }
            WaitStatus::PtraceEvent(tid, _, _) | WaitStatus::PtraceSyscall(tid) => {
                resume(tid, None);
                Ok(None)
            }
            WaitStatus::Stopped(tid, signal)
                if signal as i32 == memleak_common::HANDOVER_SIGNAL as i32
                    && self.processes.contains_key(&tgid)
                    && sent_by_kernel(tid) =>
            {
                Ok(Some(Event::PtraceCall {
                    pid: tgid.as_raw() as u32,
                    tid: tid.as_raw() as u32,
                }))
            }
            WaitStatus::Stopped(tid, signal) => {
                // Signal-delivery stop: deliver the signal as if we were not there.
                resume(tid, Some(signal));
                Ok(None)
            }
            WaitStatus::Continued(_) | WaitStatus::StillAlive => Ok(None),
        }
    }
}

/// An exit stop, with the thread's registers there, is its process's exit unless the thread
/// called `exit` (SYS_exit ends one thread; `exit_group` and fatal signals end them all). A
/// stop whose registers cannot be read was cut short: a kill woke the thread from it (the
/// group exit's, for a thread at the exit stop of its own `exit`), so it is not the stop the
/// process's exit is read at.
fn is_process_exit(regs: Option<libc::user_regs_struct>) -> bool {
    regs.is_some_and(|regs| regs.orig_rax != libc::SYS_exit as u64)
}

/// The stack a thread held at its clone event (`regs` are its registers there) gave the new
/// thread: `clone`'s second argument, or the top of `clone3`'s `stack` and `stack_size`.
fn clone_stack(thread: Pid, regs: &libc::user_regs_struct) -> Option<u64> {
    let word = |addr: u64| {
        ptrace::read(thread, addr as ptrace::AddressType)
            .ok()
            .map(|word| word as u64)
    };
    match regs.orig_rax as i64 {
        libc::SYS_clone => Some(regs.rsi).filter(|&sp| sp != 0),
        libc::SYS_clone3 => {
            // struct clone_args: stack at byte 40, stack_size at 48.
            let stack = word(regs.rdi + 40)?;
            let size = word(regs.rdi + 48)?;
            (stack != 0).then(|| stack + size.saturating_sub(1))
        }
        _ => None,
    }
}

/// The thread ids of process `pid`, from /proc.
fn tasks_of(pid: Pid) -> Vec<Pid> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Detaches one thread; a running thread must be stopped before it can be detached. (A thread
/// held at a signal's stop is let go without the signal: the callers detach a thread from
/// stops they caused, or after reporting the stops pending.) The stop a running thread reaches
/// may be a signal's on its way instead of the interrupt's: that signal goes with it.
fn detach_thread(tid: Pid) {
    if ptrace::detach(tid, None).is_err() && ptrace::interrupt(tid).is_ok() {
        let signal = match waitpid(tid, Some(WAIT_ALL)) {
            Ok(WaitStatus::Stopped(_, signal)) => Some(signal),
            _ => None,
        };
        let _ = ptrace::detach(tid, signal);
    }
}

/// Resumes a thread from the stop it was reported at (any stop but an exit stop, which
/// [`end`] lets go), unless a kill has cut that stop short since: a thread the process's exit
/// killed while we looked at its clone event, say, has gone on to its exit stop, which is
/// reported on its own and is where its registers must be read. Resumed blind, it would run
/// out of that stop unseen, and what only its registers and frames held would look lost. A
/// thread held at no stop when looked at is on its way somewhere (woken by the kill and not at
/// its exit stop yet) or gone: it is not resumed either, since a resume could only reach it
/// once it has stopped again. What is left, a kill arriving and its thread reaching its exit
/// stop between the check and the resume (a window a preempted tracer holds open for
/// milliseconds), loses nothing: the thread ran nothing since the stop, whose registers are
/// kept ([`ThreadState::LastSeen`]).
fn resume(tid: Pid, signal: Option<Signal>) {
    if matches!(stop_of(tid), Some(Stop { exit: false })) {
        let _ = ptrace::cont(tid, signal);
    }
}

/// Lets a thread held at its exit stop go on.
fn end(tid: Pid) {
    let _ = ptrace::cont(tid, None);
}

/// The stop a thread is held at now; `None` when it is at none (running, or gone).
struct Stop {
    /// Its `PTRACE_EVENT_EXIT` stop (the signal information of an event stop reads
    /// `SIGTRAP | event << 8`).
    exit: bool,
}

fn stop_of(tid: Pid) -> Option<Stop> {
    let info = ptrace::getsiginfo(tid).ok()?;
    Some(Stop {
        exit: info.si_signo == libc::SIGTRAP
            && info.si_code == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8),
    })
}

// memleak-common has no libc: its signal number is checked here.
const _: () = assert!(memleak_common::HANDOVER_SIGNAL as i32 == libc::SIGURG);

/// Whether the signal a thread is held at was sent by the kernel (an eBPF program's
/// `bpf_send_signal_thread`, among others), not by a process.
fn sent_by_kernel(tid: Pid) -> bool {
    ptrace::getsiginfo(tid).is_ok_and(|info| info.si_code == libc::SI_KERNEL)
}

/// Whether a thread is held at its exit stop now.
fn at_exit_stop(tid: Pid) -> bool {
    stop_of(tid).is_some_and(|stop| stop.exit)
}

fn thread_group_of(tid: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tgid = status.lines().find_map(|line| line.strip_prefix("Tgid:"))?;
    tgid.trim().parse().ok().map(Pid::from_raw)
}

/// Kills a process (or, given a negative pid, a process group) when its time is up, unless
/// cancelled first.
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(target: Pid, timeout: Duration) -> Self {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(timeout) {
                flag.store(true, Ordering::SeqCst);
                let _ = signal::kill(target, Signal::SIGKILL);
            }
        });
        Self {
            cancel: Some(cancel),
            fired,
        }
    }

    fn cancel(&mut self) {
        // Dropping the sender wakes the watchdog, which then returns.
        self.cancel.take();
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// While a program runs in our foreground process group, Ctrl-C and Ctrl-\ reach it directly;
/// we ignore them so the report is still written (as `system()` does).
struct IgnoreInterrupts {
    previous: Vec<(Signal, SigHandler)>,
}

impl IgnoreInterrupts {
    fn install() -> Self {
        let previous = [Signal::SIGINT, Signal::SIGQUIT]
            .into_iter()
            .filter_map(|sig| {
                // SAFETY: SIG_IGN installs no handler code.
                unsafe { signal::signal(sig, SigHandler::SigIgn) }
                    .ok()
                    .map(|old| (sig, old))
            })
            .collect();
        Self { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, handler) in self.previous.drain(..) {
            // SAFETY: restores the disposition that was in place before.
            let _ = unsafe { signal::signal(sig, handler) };
        }
    }
}
