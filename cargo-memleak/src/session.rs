//! One traced run, start to end: load the tracer, start the program gated, attach, let it run,
//! read and symbolize what it left outstanding at its exit stop, detach, reap.
//!
//! Invariants: the probes are attached before the program's first instruction and detached
//! (and the maps cleaned) on every path out, including errors.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    allocator,
    classify::{self, Block, Classification},
    error::Result,
    scan::{self, Gap, ProcessMemory, SystemObjects, Threads},
    spawn::{self, Command, Event, ExitStatus},
    symbolize::{Frame, Symbolizer},
    tracer::{Limits, ProcessTrace, Tracer},
};

/// How to trace.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// The allocator's shared object; libc when `None`.
    pub allocator_object: Option<PathBuf>,
    pub limits: Limits,
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
    pub incomplete: Vec<String>,
    /// Roots the scan could not see, when nothing was lost (so they cannot change the result;
    /// with something lost they are in `incomplete`).
    pub unseen: Vec<Gap>,
    /// An isolated command's stdout and stderr.
    pub output: Option<String>,
    /// The command's timeout killed it.
    pub timed_out: bool,
    pub timings: Timings,
}

/// Where the time of a traced run went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Fork and attach every probe.
    pub attach: Duration,
    /// From the exec to the exit stop.
    pub program: Duration,
    /// Reading the maps at the exit stop.
    pub read: Duration,
    /// Symbolizing the stacks at the exit stop.
    pub symbolize: Duration,
    /// Scanning memory for pointers at the exit stop.
    pub scan: Duration,
}

/// Loads the tracer for the configured allocator.
pub fn load_tracer(options: &TraceOptions) -> Result<Tracer> {
    let object = match &options.allocator_object {
        Some(path) => path.clone(),
        None => allocator::find_libc()?,
    };
    let probes = allocator::resolve(&object)?;
    Tracer::load(probes, options.limits)
}

/// Runs `command` traced to its end. The tracer is shared: several threads may each trace a
/// command at once, when its probes are attached everywhere.
pub fn trace(
    tracer: &Mutex<Tracer>,
    symbolizer: &Symbolizer,
    command: &Command,
) -> Result<TracedRun> {
    let program = std::iter::once(&command.program)
        .chain(&command.args)
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut timings = Timings::default();
    let start = Instant::now();
    let gated = spawn::spawn(command)?;
    let attachment = match lock(tracer).attach(gated.pid()) {
        Ok(attachment) => attachment,
        Err(err) => {
            gated.abort();
            return Err(err);
        }
    };
    let pid = attachment.pid();
    timings.attach = start.elapsed();
    let start = Instant::now();
    let mut running = match gated.release() {
        Ok(running) => running,
        Err(err) => {
            let mut tracer = lock(tracer);
            tracer.detach(attachment);
            let _ = tracer.forget(pid);
            return Err(err);
        }
    };

    let mut incomplete = Vec::new();
    let mut unseen = Vec::new();
    let mut frames = HashMap::new();
    let mut classification = None;
    let (trace, status) = match running.wait_exit_stop() {
        Ok(Event::ExitStop { tid }) => {
            timings.program = start.elapsed();
            let start = Instant::now();
            let (trace, allocator) = {
                let tracer = lock(tracer);
                (tracer.read(pid), tracer.probes().object.clone())
            };
            timings.read = start.elapsed();
            let start = Instant::now();
            if let Ok(trace) = &trace {
                let mut addrs: Vec<u64> = trace.stacks.values().flatten().copied().collect();
                addrs.sort_unstable();
                addrs.dedup();
                frames = symbolizer.symbolize(tid, &addrs);
                timings.symbolize = start.elapsed();
                let start = Instant::now();
                let threads = Threads {
                    pid,
                    live: running.live_threads(),
                    altstacks: trace.altstacks.clone(),
                };
                let scan = scan_for_leaks(trace, &threads, &allocator);
                incomplete.extend(scan.incomplete);
                unseen = scan.unseen;
                classification = Some(scan.classification);
                timings.scan = start.elapsed();
            }
            lock(tracer).detach(attachment);
            (trace.map(Some), running.finish())
        }
        Ok(Event::Exited(status)) => {
            timings.program = start.elapsed();
            lock(tracer).detach(attachment);
            if !running.timed_out() {
                incomplete.push(
                    "the process ended without an exit stop (killed by SIGKILL?): its \
                     outstanding allocations could not be read"
                        .into(),
                );
            }
            (Ok(None), Ok(status))
        }
        Err(err) => {
            lock(tracer).detach(attachment);
            (Ok(None), Err(err))
        }
    };
    let timed_out = running.timed_out();
    let output = running.output();
    drop(running);
    let forgotten = lock(tracer).forget(pid);
    let (trace, status) = (trace?, status?);
    forgotten?;
    Ok(TracedRun {
        program,
        status,
        trace,
        frames,
        classification,
        incomplete,
        unseen,
        output,
        timed_out,
        timings,
    })
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
    incomplete: Vec<String>,
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
                incomplete: vec![format!(
                    "the memory map could not be read ({err}): nothing was scanned for pointers"
                )],
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
    };
    if objects.allocator.is_empty() {
        incomplete.push(format!(
            "the program never loaded {}, so its allocations were not traced \
             (statically linked, or another allocator? see --allocator-object)",
            allocator.display()
        ));
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
        incomplete.extend(gaps.iter().map(Gap::to_string));
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
