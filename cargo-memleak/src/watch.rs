//! The periodic modes' loop: a report every INTERVAL (BCC memleak's cadence), of a process that
//! was already running (`attach`), or of the kernel (`kernel`); the reports themselves are
//! [`crate::report::Snapshot`]s.
//!
//! Invariants: reports keep their cadence (a slow one shortens the next wait); Ctrl-C (SIGINT)
//! and SIGTERM end the loop cleanly, so the probes are always detached.

use std::{
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};

use crate::{
    allocator,
    error::{Error, Result},
    outcome::Outcome,
    report::{self, Format, PeriodicOptions},
    session::{self, TraceOptions},
    symbolize::Symbolizer,
};

/// When and what to report.
#[derive(Clone, Debug)]
pub struct Options {
    pub interval: Duration,
    /// Stop after this many reports; `None`: until interrupted (or the process exits).
    pub count: Option<u64>,
    pub report: PeriodicOptions,
    pub format: Format,
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
        let snapshot = report::snapshot(
            &target,
            &trace,
            &options.report,
            |_| None,
            |addrs| symbolizer.symbolize(pid, addrs),
        );
        incomplete |= !snapshot.incomplete.is_empty();
        print!("{}", report::render_periodic(&snapshot, options.format));
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
