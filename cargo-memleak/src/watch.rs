//! Periodic reports of outstanding allocations, as BCC's memleak prints them: of a process that
//! was already running (`attach`), or of the kernel (`kernel`). Tracing starts in the middle of
//! things, so nothing is classified (a block allocated before the probes went in may be what
//! keeps a traced one alive) and a free of an unknown block is expected, not a drop.
//!
//! Invariants: a report counts only allocations at least `older` old (young ones are usually
//! about to be freed); totals cover every allocation that passes the filters, the stacks only
//! the top N, and only those N are symbolized. Ctrl-C (SIGINT) and SIGTERM end the loop
//! cleanly, so the probes are always detached.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use memleak_common::Counter;
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
        time::TimeSpec,
    },
    time::{ClockId, clock_gettime},
};
use serde::Serialize;

use crate::{
    allocator,
    error::{Error, Result},
    incomplete::{Incomplete, Reasons},
    outcome::Outcome,
    report::{Format, SortKey, clock_time, dropped_words, render_frame, stacks_shown},
    session::{self, TraceOptions},
    symbolize::{Frame, Symbolizer},
    tracer::{Counters, ProcessTrace},
};

/// When and what to report.
#[derive(Clone, Debug)]
pub struct Options {
    pub interval: Duration,
    /// Stop after this many reports; `None`: until interrupted (or the process exits).
    pub count: Option<u64>,
    /// Leave out allocations younger than this.
    pub older: Duration,
    pub top: usize,
    pub sort: SortKey,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub show_allocs: bool,
    pub format: Format,
}

/// One periodic report.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the report, HH:MM:SS (UTC).
    pub time: String,
    /// What is traced: `pid N` or `kernel`.
    pub target: String,
    pub older_than_ms: u64,
    /// The largest stacks (top N), filtered and sorted.
    pub stacks: Vec<SnapshotStack>,
    /// Stacks that passed the filters, before the top-N cut.
    pub matching_stacks: usize,
    /// Every allocation that passed the filters.
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Every counter since tracing began, by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// Counters that lost data, non-zero only (not `free_unknown`: expected here).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Why the report is incomplete: `incomplete` in words and `incomplete_reasons` as data.
    /// Empty when complete.
    #[serde(flatten)]
    pub incomplete: Reasons,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotStack {
    pub bytes: u64,
    pub allocations: u64,
    /// Innermost first.
    pub frames: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocs: Option<Vec<SnapshotAlloc>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotAlloc {
    /// The block's address, or for a kernel page, its page frame number (`pfn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pfn: Option<u64>,
    pub size: u64,
    pub age_ms: u64,
}

/// Builds one report from what the tracer recorded; `symbolize` gets the return addresses of
/// the shown stacks only. `pfn_of` tells a kernel page's key from a block's address.
pub fn snapshot(
    target: &str,
    trace: &ProcessTrace,
    options: &Options,
    pfn_of: impl Fn(u64) -> Option<u64>,
    symbolize: impl FnOnce(&[u64]) -> HashMap<u64, Vec<Frame>>,
) -> Snapshot {
    let now = monotonic_ns();
    let older_ns = options.older.as_nanos() as u64;
    let mut by_stack: HashMap<u64, Vec<_>> = HashMap::new();
    for alloc in &trace.outstanding {
        let old_enough = now.saturating_sub(alloc.timestamp_ns) >= older_ns;
        let too_small = options.min_size.is_some_and(|min| alloc.size < min);
        let too_big = options.max_size.is_some_and(|max| alloc.size > max);
        if old_enough && !too_small && !too_big {
            by_stack.entry(alloc.stack_id).or_default().push(alloc);
        }
    }
    let mut groups: Vec<(u64, u64, u64)> = by_stack
        .iter()
        .map(|(&stack_id, allocs)| {
            let bytes = allocs.iter().map(|alloc| alloc.size).sum();
            (stack_id, bytes, allocs.len() as u64)
        })
        .collect();
    groups.sort_by(|a, b| {
        let key = |&(_, bytes, count): &(u64, u64, u64)| match options.sort {
            SortKey::Size => (bytes, count),
            SortKey::Count => (count, bytes),
        };
        key(b).cmp(&key(a)).then(a.0.cmp(&b.0))
    });
    let matching_stacks = groups.len();
    let outstanding_bytes = groups.iter().map(|group| group.1).sum();
    let outstanding_allocations = groups.iter().map(|group| group.2).sum();
    groups.truncate(options.top);

    let mut addrs: Vec<u64> = groups
        .iter()
        .filter_map(|(stack_id, ..)| trace.stacks.get(stack_id))
        .flatten()
        .copied()
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let frames = symbolize(&addrs);
    let stacks = groups
        .into_iter()
        .map(|(stack_id, bytes, allocations)| SnapshotStack {
            bytes,
            allocations,
            frames: match trace.stacks.get(&stack_id) {
                Some(stack) => stack
                    .iter()
                    .flat_map(|addr| frames.get(addr).cloned().unwrap_or_default())
                    .collect(),
                None => vec![Frame::unknown(0, "stack not captured".into())],
            },
            allocs: options.show_allocs.then(|| {
                let mut allocs: Vec<SnapshotAlloc> = by_stack[&stack_id]
                    .iter()
                    .map(|alloc| {
                        let pfn = pfn_of(alloc.addr);
                        SnapshotAlloc {
                            addr: pfn.is_none().then_some(alloc.addr),
                            pfn,
                            size: alloc.size,
                            age_ms: now.saturating_sub(alloc.timestamp_ns) / 1_000_000,
                        }
                    })
                    .collect();
                allocs.sort_by_key(|alloc| (alloc.addr, alloc.pfn));
                allocs
            }),
        })
        .collect();

    let (dropped, incomplete) = drops(&trace.counters);
    Snapshot {
        time: clock_time(),
        target: target.to_owned(),
        older_than_ms: options.older.as_millis() as u64,
        stacks,
        matching_stacks,
        outstanding_bytes,
        outstanding_allocations,
        counters: Counter::ALL
            .iter()
            .map(|&counter| (counter.name(), trace.counters.get(counter)))
            .collect(),
        dropped,
        incomplete,
    }
}

/// The drops of a trace that began mid-run: everything but frees of unknown blocks.
fn drops(counters: &Counters) -> (BTreeMap<&'static str, u64>, Reasons) {
    let drops: Vec<(Counter, u64)> = counters
        .drops()
        .into_iter()
        .filter(|&(counter, _)| counter != Counter::FreeUnknown)
        .collect();
    let reasons = Reasons(
        drops
            .iter()
            .map(|&(counter, n)| Incomplete::Dropped { counter, n })
            .collect(),
    );
    let by_name = drops
        .into_iter()
        .map(|(counter, value)| (counter.name(), value))
        .collect();
    (by_name, reasons)
}

/// BCC's layout: a timestamped heading, then each stack with its frames.
pub fn render_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[{}] Top {} stacks with outstanding allocations:",
        snapshot.time,
        snapshot.stacks.len()
    );
    for stack in &snapshot.stacks {
        let _ = writeln!(
            out,
            "\t{} bytes in {} allocations from stack",
            stack.bytes, stack.allocations
        );
        for frame in &stack.frames {
            let _ = writeln!(out, "\t\t{}", render_frame(frame));
        }
        for alloc in stack.allocs.iter().flatten() {
            match (alloc.addr, alloc.pfn) {
                (_, Some(pfn)) => {
                    let _ = write!(out, "\t\tpfn = {pfn:x}");
                }
                (addr, None) => {
                    let _ = write!(out, "\t\taddr = {:x}", addr.unwrap_or(0));
                }
            }
            let _ = writeln!(out, " size = {} age = {} ms", alloc.size, alloc.age_ms);
        }
    }
    let shown = stacks_shown(snapshot.stacks.len(), snapshot.matching_stacks);
    let dropped = dropped_words(&snapshot.incomplete);
    let counter = |counter: Counter| snapshot.counters.get(counter.name()).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "memleak: {}: {} bytes in {} allocations outstanding for at least {} ms{shown}; traced \
         {} allocations, {} frees, {} frees of memory allocated before tracing began; {dropped}",
        snapshot.target,
        snapshot.outstanding_bytes,
        snapshot.outstanding_allocations,
        snapshot.older_than_ms,
        counter(Counter::Allocs),
        counter(Counter::Frees),
        counter(Counter::FreeUnknown),
    );
    out
}

/// Text, or one JSON object per line.
pub fn render(snapshot: &Snapshot, format: Format) -> String {
    match format {
        Format::Text => render_text(snapshot),
        Format::Json => {
            // Serializing plain data with string keys cannot fail.
            let mut line = serde_json::to_string(snapshot).unwrap_or_default();
            line.push('\n');
            line
        }
    }
}

/// Why the periodic reports ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The requested number of reports was printed.
    Count,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The traced process exited.
    Exited,
}

/// Ctrl-C and SIGTERM as a file descriptor. Blocks both signals in the calling thread, which
/// threads spawned later inherit: call it before any thread exists.
pub struct Interrupts(SignalFd);

impl Interrupts {
    pub fn block() -> Result<Self> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.thread_block()
            .map_err(|err| Error::io("blocking SIGINT and SIGTERM")(err.into()))?;
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map(Self)
            .map_err(|err| Error::io("creating a signalfd")(err.into()))
    }
}

/// Calls `tick` every `interval` until `count` reports, an interrupt, or (when `exited` is
/// given, a pidfd) the process's exit. Reports keep their cadence: a slow one shortens the
/// next wait rather than shifting every later report.
pub fn every(
    options: &Options,
    interrupts: &Interrupts,
    exited: Option<&OwnedFd>,
    mut tick: impl FnMut() -> Result<()>,
) -> Result<End> {
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        if options.count.is_some_and(|count| done >= count) {
            return Ok(End::Count);
        }
        let deadline = start + options.interval.mul_f64((done + 1) as f64);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut fds = vec![PollFd::new(interrupts.0.as_fd(), PollFlags::POLLIN)];
            if let Some(pidfd) = exited {
                fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
            }
            let timeout = PollTimeout::try_from(wait.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) => break,
                Ok(_) => {
                    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                    if ready(&fds[0]) {
                        return Ok(End::Interrupted);
                    }
                    if fds.get(1).is_some_and(ready) {
                        return Ok(End::Exited);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(err) => return Err(Error::io("waiting for the next report")(err.into())),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        tick()?;
        done += 1;
    }
}

/// `cargo memleak attach`: traces the running process `pid` and reports periodically.
pub fn attach(pid: u32, options: &Options, trace: &TraceOptions) -> Result<Outcome> {
    let interrupts = Interrupts::block()?;
    check_process(pid)?;
    let exited = pidfd_open(pid)?;
    let object = match &trace.allocator_object {
        Some(path) => path.clone(),
        None => allocator::find_libc_of(pid)?,
    };
    let mut tracer = session::load_tracer(&TraceOptions {
        allocator_object: Some(object),
        ..trace.clone()
    })?;
    let mut attachment = tracer.attach(pid)?;
    // Its own allocators (a #[global_allocator], jemalloc, mimalloc) are probed in its
    // executable; what cannot be makes every report incomplete.
    let executable = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let untraced = session::probe_program_allocators(&mut tracer, &mut attachment, &executable);
    eprintln!("Attaching to pid {pid}, Ctrl+C to quit.");
    if let Some(untraced) = &untraced {
        eprintln!("memleak: INCOMPLETE: {untraced}");
    }
    let mut incomplete = untraced.is_some();
    let symbolizer = Symbolizer::new();
    let target = format!("pid {pid}");
    let end = every(options, &interrupts, Some(&exited), || {
        let trace = tracer.read(pid)?;
        let snapshot = snapshot(
            &target,
            &trace,
            options,
            |_| None,
            |addrs| symbolizer.symbolize(pid, addrs),
        );
        incomplete |= !snapshot.incomplete.is_empty();
        print!("{}", render(&snapshot, options.format));
        Ok(())
    });
    tracer.detach(attachment);
    let _ = tracer.forget(pid);
    match end? {
        End::Exited => eprintln!("memleak: pid {pid} exited; detaching"),
        End::Interrupted => eprintln!("memleak: interrupted; detaching"),
        End::Count => {}
    }
    drop(tracer);
    Ok(if incomplete {
        Outcome::Incomplete
    } else {
        Outcome::Ok
    })
}

/// A process we may attach to: it exists, is a process rather than one of its threads, and is
/// not this one.
fn check_process(pid: u32) -> Result<()> {
    if pid == std::process::id() {
        return Err(Error::Selection(
            "cargo-memleak cannot trace itself; give another process's pid".into(),
        ));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| Error::NoProcess { pid })?;
    let tgid = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse::<u32>().ok());
    match tgid {
        Some(tgid) if tgid != pid => Err(Error::Selection(format!(
            "{pid} is a thread of process {tgid}; attach to the process: -p {tgid}"
        ))),
        _ => Ok(()),
    }
}

/// A file descriptor that becomes readable when `pid` exits.
fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new file descriptor we own.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(nix::libc::ESRCH) => Err(Error::NoProcess { pid }),
            _ => Err(Error::io(format!("pidfd_open({pid})"))(err)),
        };
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Nanoseconds on the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|time: TimeSpec| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}
