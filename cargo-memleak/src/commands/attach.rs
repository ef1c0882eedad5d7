//! `cargo memleak attach -p PID`: put the probes into a process that is already running (all
//! its threads) and report its outstanding allocations every INTERVAL, like BCC's
//! `memleak -p PID`, until COUNT reports, Ctrl-C, or the process's exit.
//!
//! The process's threads are seized with ptrace ([`Running::seize`]), so that its exit stops
//! it while its memory is still there: the last report is made then, of the blocks
//! outstanding at its exit (unclassified: tracing began mid-run). When it cannot be seized
//! (another tracer, a debugger, holds it) the reports go on without that last one.
//!
//! Invariants: the signals are blocked before any thread exists (see
//! [`Interrupts::block`]); the probes come off and the process's map entries go on every path
//! out of the loop; a seized process is let go (detached, or released from its exit stop) on
//! every path; the outcome is incomplete when any report was.

use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::{
    allocator,
    error::{Error, Result},
    events::{self, Space},
    fsutil,
    outcome::Outcome,
    report,
    session::{self, TraceOptions},
    spawn::{Event, Running},
    symbolize::Symbolizer,
    watch::{self, ChildSignals, End, Interrupts},
};

/// `cargo memleak attach`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    /// The process to trace.
    pub pid: u32,
    pub periodic: watch::Options,
    pub trace: TraceOptions,
    /// Draw each report's stacks as an SVG flame graph here (the latest report's stays).
    pub flamegraph: Option<std::path::PathBuf>,
}

pub fn attach(options: &Options) -> Result<Outcome> {
    let Options {
        pid,
        periodic: options,
        trace,
        flamegraph,
    } = options;
    let pid = *pid;
    if let Some(path) = flamegraph {
        fsutil::check_writable(path, "--flamegraph")?;
    }
    let interrupts = Interrupts::block()?;
    let child_signals = ChildSignals::block()?;
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
    let printer = events::Printer::start(tracer.take_events()?, Space::User);
    let mut attachment = tracer.attach(pid)?;
    // Its own allocators (a #[global_allocator], jemalloc, mimalloc) are probed in its
    // executable; what cannot be makes every report incomplete.
    let executable = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let untraced = session::probe_program_allocators(&mut tracer, &mut attachment, &executable);
    let mut seized = match Running::seize(pid) {
        Ok(running) => Some(running),
        Err(err) => {
            eprintln!("memleak: no report at its exit: {err}");
            None
        }
    };
    eprintln!("Attaching to pid {pid}, Ctrl+C to quit.");
    if let Some(untraced) = &untraced {
        eprintln!("memleak: INCOMPLETE: {untraced}");
    }
    let mut incomplete = untraced.is_some();
    let symbolizer = Symbolizer::new();
    let mut at_exit = |running: &mut Running, tid: u32| -> Result<()> {
        let trace = tracer.read(pid)?;
        let mut snapshot = report::process_snapshot(pid, tid, &trace, &options.report, &symbolizer);
        snapshot.at_exit = Some("tracing began while it ran".into());
        incomplete |= !snapshot.incomplete.is_empty();
        print!(
            "{}",
            report::render_periodic(&snapshot, options.format, &options.style)
        );
        draw(flamegraph.as_deref(), &snapshot, pid)?;
        running.release(pid);
        Ok(())
    };
    let mut stops = || -> Result<bool> {
        let Some(running) = seized.as_mut() else {
            return Ok(false);
        };
        for event in running.poll_events()? {
            match event {
                Event::ExitStop { pid: stopped, tid } if stopped == pid => {
                    at_exit(running, tid)?;
                    return Ok(true);
                }
                Event::ExitStop { pid: stopped, .. } => running.release(stopped),
                Event::Exec { pid: execed } => running.resume(execed),
                Event::Forked {
                    parent_thread,
                    child,
                    ..
                } => {
                    running.resume(parent_thread);
                    running.resume(child);
                }
                Event::Exited(_) => return Ok(true),
                // Only followed children are handed over; this attaches to none.
                Event::PtraceCall { tid, .. } => running.pass_on(tid),
                Event::ChildExited { .. } => {}
            }
        }
        Ok(false)
    };
    let mut periodic_incomplete = false;
    let end = watch::every(
        options,
        &interrupts,
        Some(&exited),
        Some((&child_signals, &mut stops)),
        || {
            let trace = tracer.read(pid)?;
            let snapshot = report::process_snapshot(pid, pid, &trace, &options.report, &symbolizer);
            periodic_incomplete |= !snapshot.incomplete.is_empty();
            print!(
                "{}",
                report::render_periodic(&snapshot, options.format, &options.style)
            );
            draw(flamegraph.as_deref(), &snapshot, pid)
        },
    );
    incomplete |= periodic_incomplete;
    // Released at its exit stop: it ends now (and is reaped by its parent). Otherwise it runs
    // on, untraced.
    if let Some(running) = seized.take() {
        running.let_go();
    }
    tracer.detach(attachment);
    let _ = tracer.forget(pid);
    if let Some(printer) = printer {
        printer.stop();
    }
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

/// `--flamegraph PATH`: a report's stacks drawn as an SVG (each report replaces the last).
fn draw(path: Option<&std::path::Path>, snapshot: &report::Snapshot, pid: u32) -> Result<()> {
    match path {
        Some(path) => report::folded::write_flamegraph(
            path,
            &report::folded::fold_stacks(&snapshot.stacks),
            &format!("pid {pid}"),
            None,
        ),
        None => Ok(()),
    }
}
