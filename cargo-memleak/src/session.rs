//! One traced run, start to end: load the tracer, start the program gated, attach, let it run,
//! read and symbolize what it left outstanding at its exit stop, detach, reap.
//!
//! Invariants: the probes are attached before the program's first instruction and detached
//! (and the maps cleaned) on every path out, including errors.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    allocator::{self, RustAllocator},
    classify::{self, Block, Classification},
    error::Result,
    incomplete::Incomplete,
    scan::{self, Gap, ProcessMemory, SystemObjects, Threads},
    spawn::{self, Command, Event, ExitStatus, Running},
    symbolize::{Frame, Symbolizer},
    tracer::{Attachment, Limits, ProcessTrace, Recording, Tracer},
};

/// How to trace.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// The allocator's shared object; libc when `None`.
    pub allocator_object: Option<PathBuf>,
    /// `--symbols-prefix`: the allocator functions are `PREFIXmalloc`, `PREFIXfree`, ...: in
    /// `allocator_object` instead of libc's names, and in each traced executable as well.
    pub symbols_prefix: Option<String>,
    pub limits: Limits,
    /// Sampling, per-stack totals, trace lines.
    pub recording: Recording,
}

/// What one traced run produced.
#[derive(Debug)]
pub struct TracedRun {
    /// The command line, for messages.
    pub program: String,
    pub status: ExitStatus,
    /// `None` when the process ended without an exit stop.
    pub trace: Option<ProcessTrace>,
    /// Return address → frames, for every address in `trace`'s stacks.
    pub frames: HashMap<u64, Vec<Frame>>,
    /// The category of each of `trace`'s outstanding allocations, in order.
    pub classification: Option<Classification>,
    /// Reasons the trace is incomplete, other than the drop counters.
    pub incomplete: Vec<Incomplete>,
    /// Roots the scan could not see, when nothing was lost (so they cannot change the result;
    /// with something lost they are in `incomplete`).
    pub unseen: Vec<Gap>,
    /// An isolated command's stdout and stderr.
    pub output: Option<String>,
    /// The command's timeout killed it.
    pub timed_out: bool,
    /// Processes of its process group were still alive after it ended (and were killed):
    /// nextest's LEAK.
    pub left_processes: bool,
    pub timings: Timings,
    /// The processes it started that were followed ([`Command::follow`]), in the order they
    /// ended.
    pub children: Vec<ChildRun>,
    pub unfollowed: UnfollowedChildren,
}

/// The processes a run started that exec'd a program not followed, and were let go there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnfollowedChildren {
    pub count: u32,
    /// Those forked (not vfork'd, so they could allocate before their exec) and so traced
    /// until it; a vfork'd child never gets links unless it is followed.
    pub traced_until_exec: u32,
}

/// A process the traced program started (or one of those started), followed from its first
/// instruction.
#[derive(Debug)]
pub struct ChildRun {
    pub pid: u32,
    /// Its command line (after its last exec; its parent's when it never exec'd).
    pub program: String,
    /// The program it ran last (a child that never exec'd runs its parent's).
    pub executable: Option<PathBuf>,
    pub fate: ChildFate,
    /// Its trace, read and scanned at its exit stop like the program's (`program` is its
    /// command line); `None` when it ended without one or was still running.
    pub run: Option<TracedRun>,
}

/// How a followed child ended, as far as tracing goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildFate {
    /// Held at its exit stop, read and scanned.
    Scanned,
    /// It ended without an exit stop (killed by SIGKILL, usually by its parent): nothing of it
    /// could be read, and nothing of it was left behind.
    Killed(ExitStatus),
    /// Still running when the program ended: it was let go, unscanned.
    StillRunning,
    /// Asked for by a `ptrace` call of its own (`PTRACE_TRACEME`) or of another process
    /// (`PTRACE_ATTACH`, `PTRACE_SEIZE`): let go before it, unscanned, so that the call finds
    /// it untraced as it would without us (a process has one tracer).
    HandedOver,
    /// It could not be traced (the probes could not be attached to it).
    Untraced(String),
}

/// Where the time of a traced run went (serialized in milliseconds).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// Fork the child and seize it, up to its gate.
    #[serde(rename = "spawn_ms", serialize_with = "milliseconds")]
    pub spawn: Duration,
    /// Register it and attach every probe (its allocator shim's too), while it waits.
    #[serde(rename = "attach_ms", serialize_with = "milliseconds")]
    pub attach: Duration,
    /// From the exec to the exit stop.
    #[serde(rename = "program_ms", serialize_with = "milliseconds")]
    pub program: Duration,
    /// Reading the maps at the exit stop.
    #[serde(rename = "read_ms", serialize_with = "milliseconds")]
    pub read: Duration,
    /// Symbolizing the stacks at the exit stop.
    #[serde(rename = "symbolize_ms", serialize_with = "milliseconds")]
    pub symbolize: Duration,
    /// Scanning memory for pointers at the exit stop.
    #[serde(rename = "scan_ms", serialize_with = "milliseconds")]
    pub scan: Duration,
    /// After the scan: its links handed to the background, the process let go and reaped,
    /// its map entries removed.
    #[serde(rename = "finish_ms", serialize_with = "milliseconds")]
    pub finish: Duration,
}

fn milliseconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1e6).round() / 1e3)
}

impl Timings {
    /// The phases, named as `--timings` prints them.
    pub fn phases(&self) -> [(&'static str, Duration); 7] {
        [
            ("spawn", self.spawn),
            ("attach", self.attach),
            ("program", self.program),
            ("read", self.read),
            ("symbolize", self.symbolize),
            ("scan", self.scan),
            ("finish", self.finish),
        ]
    }
}

/// Loads the tracer for the configured allocator.
pub fn load_tracer(options: &TraceOptions) -> Result<Tracer> {
    let (object, prefix) = match &options.allocator_object {
        Some(path) => (path.clone(), options.symbols_prefix.as_deref()),
        None => (allocator::find_libc()?, None),
    };
    let probes = allocator::resolve(&object, prefix)?;
    let mut tracer = Tracer::load(probes, options.limits, options.recording)?;
    tracer.set_symbols_prefix(options.symbols_prefix.clone());
    Ok(tracer)
}

/// Runs `command` traced to its end, and the children it starts when they are followed. The
/// tracer is shared: several threads may each trace a command at once.
pub fn trace(
    tracer: &Mutex<Tracer>,
    symbolizer: &Symbolizer,
    command: &Command,
) -> Result<TracedRun> {
    trace_observed(tracer, symbolizer, command, |_| {})
}

/// [`trace`], telling `started` the program's pid once it is traced and about to run (so
/// that another thread can read its maps while it runs: `exec INTERVAL`).
pub fn trace_observed(
    tracer: &Mutex<Tracer>,
    symbolizer: &Symbolizer,
    command: &Command,
    started: impl FnOnce(u32),
) -> Result<TracedRun> {
    let program = std::iter::once(&command.program)
        .chain(&command.args)
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut timings = Timings::default();
    let start = Instant::now();
    let gated = spawn::spawn(command)?;
    timings.spawn = start.elapsed();
    let start = Instant::now();
    let attachment = match lock(tracer).attach(gated.pid()) {
        Ok(attachment) => attachment,
        Err(err) => {
            gated.abort();
            return Err(err);
        }
    };
    let pid = attachment.pid();
    let mut attachment = attachment;
    let shim = probe_program_allocators(&mut lock(tracer), &mut attachment, gated.program());
    timings.attach = start.elapsed();
    let start = Instant::now();
    started(pid);
    let mut running = match gated.release() {
        Ok(running) => running,
        Err(err) => {
            let mut tracer = lock(tracer);
            tracer.detach(attachment);
            let _ = tracer.forget(pid);
            return Err(err);
        }
    };

    let executable = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut root = Followed::new(pid, program, executable, Some(attachment));
    root.incomplete.extend(shim);
    let mut children: BTreeMap<u32, Followed> = BTreeMap::new();
    let mut ended = Vec::new();
    let mut unfollowed = UnfollowedChildren::default();
    let outcome = follow(
        tracer,
        symbolizer,
        command,
        &mut running,
        &mut root,
        &mut children,
        &mut ended,
        &mut unfollowed,
        &mut timings,
        start,
    );
    // Whatever happened, nothing stays attached or recorded.
    {
        let mut tracer = lock(tracer);
        root.release_links(&mut tracer);
        for (child_pid, mut child) in std::mem::take(&mut children) {
            if child.until_exec {
                running.detach(child_pid);
                continue;
            }
            child.release_links(&mut tracer);
            let _ = tracer.forget(child_pid);
            running.detach(child_pid);
            ended.push(child.into_child(ChildFate::StillRunning));
        }
    }
    let left_processes = running.kill_left_behind();
    let timed_out = running.timed_out();
    let output = running.output();
    drop(running);
    let forgotten = lock(tracer).forget(pid);
    let status = outcome?;
    let scanned = root.scanned.take().transpose()?;
    forgotten?;
    if scanned.is_none() && !timed_out {
        root.incomplete.push(Incomplete::NoExitStop);
    }
    let mut run = root.into_run(status, scanned);
    run.output = output;
    run.timed_out = timed_out;
    run.left_processes = left_processes;
    timings.finish = start
        .elapsed()
        .saturating_sub(timings.program + timings.read + timings.symbolize + timings.scan);
    run.timings = timings;
    run.children = ended;
    run.unfollowed = unfollowed;
    Ok(run)
}

/// The event loop of a traced run: until the program is reaped, scan each process at its
/// exit stop, give each followed child links of its own at its fork, and keep following it
/// after an exec only if `command.follow` wants its new program. Returns the program's status.
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one run, threaded through"
)]
fn follow(
    tracer: &Mutex<Tracer>,
    symbolizer: &Symbolizer,
    command: &Command,
    running: &mut Running,
    root: &mut Followed,
    children: &mut BTreeMap<u32, Followed>,
    ended: &mut Vec<ChildRun>,
    unfollowed: &mut UnfollowedChildren,
    timings: &mut Timings,
    start: Instant,
) -> Result<ExitStatus> {
    let pid = root.pid;
    let mut root_execed = false;
    loop {
        match running.wait_event()? {
            Event::ExitStop { pid: stopped, tid } if stopped == pid => {
                timings.program = start.elapsed();
                root.read_at_exit(tracer, symbolizer, running, tid, Some(timings));
                root.release_links(&mut lock(tracer));
                running.release(pid);
            }
            Event::ExitStop { pid: stopped, tid } => {
                if let Some(child) = children.get_mut(&stopped) {
                    child.read_at_exit(tracer, symbolizer, running, tid, None);
                    child.release_links(&mut lock(tracer));
                }
                running.release(stopped);
            }
            Event::Forked {
                parent,
                parent_thread,
                child,
                shares_memory,
            } => {
                let (program, executable) = match children.get(&parent) {
                    Some(parent) => (parent.program.clone(), parent.executable.clone()),
                    None => (root.program.clone(), root.executable.clone()),
                };
                // A vfork'd child (posix_spawn, Command, system) shares its parent's memory
                // and may do nothing but exec or _exit: it gets links only if what it execs
                // is followed. A forked one may allocate at once: it is traced from its fork,
                // starting with its parent's blocks.
                if shares_memory {
                    let mut followed = Followed::new(child, program, executable, None);
                    followed.until_exec = true;
                    children.insert(child, followed);
                    running.resume(parent_thread);
                    running.resume(child);
                    continue;
                }
                let mut tracer = lock(tracer);
                let mut followed = match tracer.attach(child) {
                    Ok(attachment) => Followed::new(child, program, executable, Some(attachment)),
                    Err(err) => {
                        let mut followed = Followed::new(child, program, executable, None);
                        followed.untraced = Some(err.to_string());
                        followed
                    }
                };
                if followed.attachment.is_some()
                    && let Err(err) = tracer.inherit(parent, child)
                {
                    followed.incomplete.push(Incomplete::NotInherited {
                        error: err.to_string(),
                    });
                }
                children.insert(child, followed);
                running.resume(parent_thread);
                running.resume(child);
            }
            Event::Exec { pid: execed } => {
                if execed == pid {
                    // Its first exec is the gate's, into the program: nothing ran before it
                    // (the child allocates nothing between fork and exec). After that, the
                    // program exec'd another: tracing starts over with it.
                    if std::mem::replace(&mut root_execed, true) {
                        let _ = lock(tracer).restart(pid);
                    }
                    running.resume(pid);
                    continue;
                }
                let executable = std::fs::read_link(format!("/proc/{execed}/exe")).ok();
                let wanted = executable
                    .as_deref()
                    .is_some_and(|exe| command.follow.follows(exe));
                let mut tracer = lock(tracer);
                match children.remove(&execed) {
                    Some(mut child) if wanted => {
                        if std::mem::take(&mut child.until_exec) {
                            // A vfork'd child: nothing of the new program has run, so it is
                            // traced from its first instruction, as the program was.
                            match tracer.attach(execed) {
                                Ok(attachment) => child.attachment = Some(attachment),
                                Err(err) => child.untraced = Some(err.to_string()),
                            }
                        } else if child.attachment.is_some()
                            && let Err(err) = tracer.restart(execed)
                        {
                            child.incomplete.push(Incomplete::NotRestarted {
                                error: err.to_string(),
                            });
                        }
                        if let (Some(attachment), Some(exe)) =
                            (child.attachment.as_mut(), executable.as_deref())
                        {
                            child.incomplete.extend(probe_program_allocators(
                                &mut tracer,
                                attachment,
                                exe,
                            ));
                        }
                        child.program = command_line_of(execed).unwrap_or(child.program);
                        child.executable = executable;
                        children.insert(execed, child);
                        running.resume(execed);
                    }
                    Some(mut child) => {
                        unfollowed.count += 1;
                        if child.attachment.is_some() {
                            unfollowed.traced_until_exec += 1;
                            child.release_links(&mut tracer);
                            let _ = tracer.forget(execed);
                        }
                        running.detach(execed);
                    }
                    None => running.resume(execed),
                }
            }
            Event::PtraceCall { pid: caller, tid } => {
                let wanted = lock(tracer).take_handover(tid);
                match wanted.map(|wanted| (wanted, children.remove(&wanted))) {
                    // A followed child asked for by its own ptrace (its PTRACE_TRACEME, or its
                    // parent's attach): a process has one tracer, so it is let go before the
                    // call, unscanned, and the call succeeds as it would untraced.
                    Some((wanted, Some(mut child))) => {
                        {
                            let mut tracer = lock(tracer);
                            child.release_links(&mut tracer);
                            let _ = tracer.forget(wanted);
                        }
                        running.detach(wanted);
                        if wanted != caller {
                            running.resume(tid);
                        }
                        if !child.until_exec {
                            ended.push(child.into_child(ChildFate::HandedOver));
                        }
                    }
                    // The program itself is never let go, and a process this run does not follow
                    // (another test's: STATS is every worker's) is not its to give: the call fails
                    // as it did before.
                    Some((_, None)) => running.resume(tid),
                    None => running.pass_on(tid),
                }
            }
            Event::ChildExited {
                pid: exited,
                status,
            } => {
                if let Some(mut child) = children.remove(&exited) {
                    if child.until_exec && !matches!(status, ExitStatus::Signaled { .. }) {
                        // A vfork'd child that never exec'd (its exec failed) ran nothing of
                        // its own. One killed during its exec is reported killed, as before.
                        continue;
                    }
                    let mut tracer = lock(tracer);
                    child.release_links(&mut tracer);
                    let _ = tracer.forget(exited);
                    let fate = if child.scanned.is_some() {
                        ChildFate::Scanned
                    } else {
                        ChildFate::Killed(status.clone())
                    };
                    child.status = Some(status);
                    ended.push(child.into_child(fate));
                }
            }
            Event::Exited(status) => {
                if root.scanned.is_none() {
                    timings.program = start.elapsed();
                }
                return Ok(status);
            }
        }
    }
}

/// A process being traced, from its start (or its fork) to its end.
struct Followed {
    pid: u32,
    /// Its command line (after its last exec).
    program: String,
    executable: Option<PathBuf>,
    attachment: Option<Attachment>,
    /// What was read at its exit stop (an error reading the maps is the run's error).
    scanned: Option<Result<Scanned>>,
    status: Option<ExitStatus>,
    incomplete: Vec<Incomplete>,
    /// Why it could not be traced at all.
    untraced: Option<String>,
    /// A vfork'd child before its exec: untraced, sharing its parent's memory.
    until_exec: bool,
}

/// What was read of a process at its exit stop.
struct Scanned {
    trace: ProcessTrace,
    frames: HashMap<u64, Vec<Frame>>,
    classification: Classification,
    incomplete: Vec<Incomplete>,
    unseen: Vec<Gap>,
}

impl Followed {
    fn new(
        pid: u32,
        program: String,
        executable: Option<PathBuf>,
        attachment: Option<Attachment>,
    ) -> Self {
        Self {
            pid,
            program,
            executable,
            attachment,
            scanned: None,
            status: None,
            incomplete: Vec::new(),
            untraced: None,
            until_exec: false,
        }
    }

    /// Reads, symbolizes and scans the process, held at its exit stop by thread `tid`.
    fn read_at_exit(
        &mut self,
        tracer: &Mutex<Tracer>,
        symbolizer: &Symbolizer,
        running: &mut Running,
        tid: u32,
        timings: Option<&mut Timings>,
    ) {
        if self.attachment.is_none() {
            return;
        }
        let mut spent = Timings::default();
        let start = Instant::now();
        let (mut trace, allocator, code) = {
            let mut tracer = lock(tracer);
            let code: Vec<std::ops::Range<u64>> = self
                .executable
                .as_deref()
                .and_then(|exe| tracer.executable_allocators(exe).ok())
                .into_iter()
                .flat_map(|found| found.known.into_iter().filter_map(|known| known.code))
                .collect();
            (tracer.read(self.pid), tracer.probes().object.clone(), code)
        };
        if let (Ok(trace), Some(executable)) = (&mut trace, &self.executable) {
            claim_allocator_maps(trace, self.pid, executable, &code);
        }
        spent.read = start.elapsed();
        let scanned = trace.map(|trace| {
            let start = Instant::now();
            let mut addrs: Vec<u64> = trace.stacks.values().flatten().copied().collect();
            addrs.sort_unstable();
            addrs.dedup();
            let frames = symbolizer.symbolize(tid, &addrs);
            spent.symbolize = start.elapsed();
            let start = Instant::now();
            let threads = Threads {
                pid: self.pid,
                live: running.live_threads(self.pid),
                altstacks: trace.altstacks.clone(),
            };
            let scan = scan_for_leaks(&trace, &threads, &allocator);
            spent.scan = start.elapsed();
            Scanned {
                trace,
                frames,
                classification: scan.classification,
                incomplete: scan.incomplete,
                unseen: scan.unseen,
            }
        });
        if let Some(timings) = timings {
            timings.read = spent.read;
            timings.symbolize = spent.symbolize;
            timings.scan = spent.scan;
        }
        self.scanned = Some(scanned);
    }

    /// Lets the kernel remove its probes, in the background.
    fn release_links(&mut self, tracer: &mut Tracer) {
        if let Some(attachment) = self.attachment.take() {
            tracer.detach(attachment);
        }
    }

    fn into_run(mut self, status: ExitStatus, scanned: Option<Scanned>) -> TracedRun {
        let (trace, frames, classification, unseen) = match scanned {
            Some(scanned) => {
                self.incomplete.extend(scanned.incomplete);
                (
                    Some(scanned.trace),
                    scanned.frames,
                    Some(scanned.classification),
                    scanned.unseen,
                )
            }
            None => (None, HashMap::new(), None, Vec::new()),
        };
        TracedRun {
            program: self.program,
            status,
            trace,
            frames,
            classification,
            incomplete: self.incomplete,
            unseen,
            output: None,
            timed_out: false,
            left_processes: false,
            timings: Timings::default(),
            children: Vec::new(),
            unfollowed: UnfollowedChildren::default(),
        }
    }

    fn into_child(mut self, fate: ChildFate) -> ChildRun {
        let fate = match self.untraced.take() {
            Some(reason) => ChildFate::Untraced(reason),
            None => fate,
        };
        let (pid, executable, program) = (self.pid, self.executable.clone(), self.program.clone());
        let run = match (self.scanned.take(), self.status.clone()) {
            (Some(Ok(mut scanned)), Some(status)) => {
                // Killed from outside (SIGKILL) before it allocated anything, as a child killed
                // during its exec: its libc not being loaded yet hides nothing.
                let killed =
                    matches!(&status, ExitStatus::Signaled { signal, .. } if signal == "SIGKILL");
                if killed && scanned.trace.counters.get(memleak_common::Counter::Allocs) == 0 {
                    scanned
                        .incomplete
                        .retain(|reason| !matches!(reason, Incomplete::AllocatorNotLoaded { .. }));
                }
                Some(self.into_run(status, Some(scanned)))
            }
            (Some(Err(err)), Some(status)) => {
                self.incomplete.push(Incomplete::TraceUnreadable {
                    error: err.to_string(),
                });
                Some(self.into_run(status, None))
            }
            _ => None,
        };
        ChildRun {
            pid,
            program,
            executable,
            fate,
            run,
        }
    }
}

/// Probes what `executable` allocates through besides libc, for the attached process: its
/// own `malloc` family when it defines one, the known allocators it defines (jemalloc,
/// mimalloc, `--symbols-prefix`), and its allocator shim when its Rust allocations reach none
/// of those. Says why some allocations are not traced when they cannot be.
pub fn probe_program_allocators(
    tracer: &mut Tracer,
    attachment: &mut Attachment,
    executable: &std::path::Path,
) -> Option<Incomplete> {
    let not_traced = |why: String| {
        Some(Incomplete::RustAllocationsNotTraced {
            executable: executable.to_owned(),
            why,
        })
    };
    let probed = tracer.probes().object.clone();
    let same_file = |a: &std::path::Path, b: &std::path::Path| {
        a == b
            || std::fs::canonicalize(a)
                .is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
    };
    let allocators = match tracer.executable_allocators(executable) {
        Ok(allocators) => allocators,
        Err(err) => return not_traced(format!("it could not be read ({err})")),
    };
    match &allocators.own_malloc {
        Some(_) if same_file(&probed, executable) => {}
        Some(Ok(probes)) => {
            if let Err(err) = tracer.attach_object(attachment, probes) {
                return Some(own_malloc_untraced(executable, &probed, &err.to_string()));
            }
        }
        Some(Err(why)) => return Some(own_malloc_untraced(executable, &probed, why)),
        None => {}
    }
    for known in &allocators.known {
        if let Err(err) = tracer.attach_object(attachment, &known.probes) {
            return Some(Incomplete::KnownAllocatorNotProbed {
                name: known.name.to_string(),
                executable: executable.to_owned(),
                error: err.to_string(),
            });
        }
    }
    match allocators.rust {
        RustAllocator::System | RustAllocator::Known => None,
        RustAllocator::Custom(probes) => match tracer.attach_object(attachment, &probes) {
            Ok(()) => None,
            Err(err) => not_traced(format!("its allocator shim could not be probed ({err})")),
        },
        RustAllocator::Unprobed => not_traced(
            "it has a #[global_allocator] of its own, but no whole allocator shim \
             (__rust_alloc, __rust_dealloc, ...) to probe (inlined by LTO?) and no allocator \
             known by its symbols; name its functions with --symbols-prefix, or build it \
             without LTO"
                .into(),
        ),
    }
}

/// Moves the regions a known allocator in `executable` mapped from its own code (`code`, file
/// offsets) outside any of its entry points (jemalloc's first chunks, mapped by a constructor)
/// from the blocks to the allocator's own mappings: they hold the program's blocks and stale
/// free lists, and are neither blocks nor roots.
fn claim_allocator_maps(
    trace: &mut ProcessTrace,
    pid: u32,
    executable: &Path,
    code: &[std::ops::Range<u64>],
) {
    if code.is_empty() {
        return;
    }
    let Ok(maps) = scan::mappings(pid) else {
        return;
    };
    let stacks = &trace.stacks;
    let (own, blocks): (Vec<_>, Vec<_>) = std::mem::take(&mut trace.outstanding)
        .into_iter()
        .partition(|alloc| {
            stacks
                .get(&alloc.stack_id)
                .and_then(|frames| frames.first())
                .is_some_and(|&caller| scan::in_code(&maps, executable, code, caller))
        });
    trace.outstanding = blocks;
    trace
        .allocator_maps
        .extend(own.iter().map(|alloc| (alloc.addr, alloc.size)));
    trace.allocator_maps.sort_unstable();
}

/// Why the C allocations of an executable with a `malloc` of its own were not traced.
fn own_malloc_untraced(executable: &Path, probed: &Path, why: &str) -> Incomplete {
    Incomplete::DefinesMalloc {
        executable: executable.to_owned(),
        probed: probed.to_owned(),
        why: why.to_owned(),
    }
}

/// The command line of process `pid`, from /proc.
fn command_line_of(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = bytes
        .split(|&byte| byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The tracer, even if another thread panicked while holding it (its maps stay consistent:
/// every update is a single map operation).
fn lock(tracer: &Mutex<Tracer>) -> MutexGuard<'_, Tracer> {
    tracer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the leak scan of a stopped process found.
struct Scan {
    classification: Classification,
    /// Why the result may be wrong.
    incomplete: Vec<Incomplete>,
    /// Roots it could not see, which cannot change a result with nothing lost.
    unseen: Vec<Gap>,
}

/// Classifies the outstanding allocations of the stopped process.
///
/// A root the scan could not see (a thread's registers, memory that could not be read) can
/// only make memory look lost, never hide a leak: with nothing lost it cannot change the
/// result and is only noted; with something lost the result is incomplete.
fn scan_for_leaks(trace: &ProcessTrace, threads: &Threads, allocator: &std::path::Path) -> Scan {
    let blocks: Vec<Block> = trace
        .outstanding
        .iter()
        .map(|alloc| Block {
            addr: alloc.addr,
            size: alloc.size,
        })
        .collect();
    let maps = match scan::mappings(threads.pid) {
        Ok(maps) => maps,
        Err(err) => {
            return Scan {
                classification: Classification {
                    categories: vec![classify::Category::DefinitelyLost; blocks.len()],
                    ..Classification::default()
                },
                incomplete: vec![Incomplete::MemoryMapUnreadable {
                    error: err.to_string(),
                }],
                unseen: Vec::new(),
            };
        }
    };
    let mut incomplete = Vec::new();
    let objects = SystemObjects {
        allocator: scan::paths_of(&maps, allocator),
        linker: scan::dynamic_linker(threads.pid, &maps)
            .map(|linker| scan::paths_of(&maps, linker))
            .unwrap_or_default(),
        allocator_maps: trace
            .allocator_maps
            .iter()
            .map(|&(start, len)| start..start.saturating_add(len))
            .collect(),
    };
    if objects.allocator.is_empty() {
        incomplete.push(Incomplete::AllocatorNotLoaded {
            allocator: allocator.to_owned(),
        });
    }
    let (mut roots, mut gaps) = scan::roots(&maps, &blocks, threads, &objects);
    let callers = trace.outstanding.iter().map(|alloc| {
        trace
            .stacks
            .get(&alloc.stack_id)
            .and_then(|frames| frames.first().copied())
    });
    roots.blocks = scan::linker_blocks(&maps, &objects.linker, callers);
    let mut memory = ProcessMemory::new(threads.pid, &maps);
    let classification = classify::classify(&blocks, &roots, &mut memory);
    if classification.unreadable_regions > 0 {
        gaps.push(Gap::Unreadable {
            regions: classification.unreadable_regions,
            bytes: classification.unreadable_bytes,
        });
    }
    let lost = classification
        .categories
        .iter()
        .any(|&category| category != classify::Category::StillReachable);
    let unseen = if lost {
        incomplete.extend(gaps.iter().cloned().map(Incomplete::from));
        Vec::new()
    } else {
        gaps
    };
    Scan {
        classification,
        incomplete,
        unseen,
    }
}
