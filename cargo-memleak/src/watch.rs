//! The periodic modes' loop: a report every INTERVAL (BCC memleak's cadence), of a process that
//! was already running (`attach`), or of the kernel (`kernel`); the reports themselves are
//! [`crate::report::Snapshot`]s.
//!
//! A seized process (`attach`) also stops at events of its threads between reports: SIGCHLD
//! wakes the loop for them at once ([`ChildSignals`]), so that the process waits for us no
//! longer than it takes to resume it.
//!
//! Invariants: reports keep their cadence (a slow one shortens the next wait); Ctrl-C (SIGINT)
//! and SIGTERM end the loop cleanly, so the probes are always detached.

use std::{
    os::fd::{AsFd as _, OwnedFd},
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
    error::{Error, Result},
    report::{Format, PeriodicOptions, text::Short},
};

/// When and what to report.
#[derive(Clone, Debug)]
pub struct Options {
    pub interval: Duration,
    /// Stop after this many reports; `None`: until interrupted (or the process exits).
    pub count: Option<u64>,
    pub report: PeriodicOptions,
    pub format: Format,
    /// How text reports show stacks.
    pub style: Short,
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
        signal_fd(
            &[Signal::SIGINT, Signal::SIGTERM],
            "blocking SIGINT and SIGTERM",
        )
        .map(Self)
    }
}

/// Blocks `signals` in the calling thread and returns a descriptor that reads them.
fn signal_fd(signals: &[Signal], what: &'static str) -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    for &signal in signals {
        mask.add(signal);
    }
    mask.thread_block()
        .map_err(|err| Error::io(what)(err.into()))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|err| Error::io("creating a signalfd")(err.into()))
}

/// SIGCHLD as a file descriptor: a seized process's threads stopped (see [`every`]). Blocks
/// it in the calling thread: call it before any thread exists.
pub struct ChildSignals(SignalFd);

impl ChildSignals {
    pub fn block() -> Result<Self> {
        signal_fd(&[Signal::SIGCHLD], "blocking SIGCHLD").map(Self)
    }

    /// Forgets the signals received so far (the caller then handles every pending stop).
    fn drain(&self) {
        while let Ok(Some(_)) = self.0.read_signal() {}
    }
}

/// What [`every`] does when SIGCHLD comes: handle the stops; `true` when the process is at
/// its exit (the loop then ends with [`End::Exited`]).
pub type OnChild<'a> = (&'a ChildSignals, &'a mut dyn FnMut() -> Result<bool>);

/// Calls `tick` every `interval` until `count` reports, an interrupt, or (when `exited` is
/// given, a pidfd) the process's exit; `on_child` handles a seized process's stops between
/// ticks. Reports keep their cadence: a slow one shortens the next wait rather than shifting
/// every later report.
pub fn every(
    options: &Options,
    interrupts: &Interrupts,
    exited: Option<&OwnedFd>,
    mut on_child: Option<OnChild<'_>>,
    mut tick: impl FnMut() -> Result<()>,
) -> Result<End> {
    let start = Instant::now();
    let mut done = 0u64;
    let child_signals = on_child.as_ref().map(|(signals, _)| *signals);
    loop {
        if options.count.is_some_and(|count| done >= count) {
            return Ok(End::Count);
        }
        let deadline = start + options.interval.mul_f64((done + 1) as f64);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut fds = vec![PollFd::new(interrupts.0.as_fd(), PollFlags::POLLIN)];
            if let Some(signals) = child_signals {
                fds.push(PollFd::new(signals.0.as_fd(), PollFlags::POLLIN));
            }
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
                    let mut next = 1;
                    if let (Some(signals), Some((_, handle))) = (child_signals, &mut on_child) {
                        if ready(&fds[next]) {
                            signals.drain();
                            if handle()? {
                                return Ok(End::Exited);
                            }
                        }
                        next += 1;
                    }
                    if fds.get(next).is_some_and(ready) {
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
