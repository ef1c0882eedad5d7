//! `cargo memleak exec`: trace any program from its first instruction and report what it left
//! outstanding at exit. `run` traces its binary the same way ([`trace_and_report`]). With
//! INTERVAL (BCC's `memleak -c CMD INTERVAL`) the outstanding allocations are reported every
//! INTERVAL on stdout while it runs, from a thread of their own, before the report at exit.
//!
//! The report at exit classifies blocks (lost, reachable) by scanning the program's memory
//! for pointers to them, which needs every block: with `--sample-rate` (a block reached only
//! through an unrecorded one would look lost) or `--combined-only` (no addresses) it is the
//! outstanding allocations at exit instead, unclassified, saying why.
//!
//! Invariants: the report is written (to `--output` or stderr) before the probes are detached,
//! so the user sees it while the kernel removes them; the periodic reports and the trace lines
//! end before it is written; the outcome is the program's failure first, then an incomplete
//! trace, then success.

use std::{
    collections::HashMap,
    io::Write as _,
    path::PathBuf,
    sync::{
        Mutex,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

use crate::{
    error::Result,
    events::{self, Space},
    fsutil,
    outcome::Outcome,
    report::{self, Format, PeriodicOptions, Report, Snapshot},
    session::{self, TraceOptions, TracedRun},
    spawn::Command,
    symbolize::Symbolizer,
    tracer::{Recording, Tracer},
    watch,
};

/// `cargo memleak exec`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub command: Command,
    pub report: ReportOptions,
    pub trace: TraceOptions,
}

/// How the report at exit is made and where it goes (`exec` and `run`).
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    pub report: report::Options,
    pub format: Format,
    /// How text reports show stacks.
    pub style: report::text::Short,
    /// Write the report here instead of stderr.
    pub output: Option<PathBuf>,
    /// Print where the time went to stderr.
    pub timings: bool,
    /// `INTERVAL [COUNT]`: report the outstanding allocations every INTERVAL while it runs.
    pub periodic: Option<watch::Options>,
    /// Draw the stacks (every one, not only the top N) as an SVG flame graph here.
    pub flamegraph: Option<PathBuf>,
}

impl ReportOptions {
    /// Checks every path the report is written to, before anything is built or traced: a
    /// mistake there must not cost the run.
    pub fn check_outputs(&self) -> Result<()> {
        if let Some(path) = &self.output {
            fsutil::check_writable(path, "--output")?;
        }
        if let Some(path) = &self.flamegraph {
            fsutil::check_writable(path, "--flamegraph")?;
        }
        Ok(())
    }

    /// These options with the short view's paths relative to `root` (`run`: its workspace).
    pub fn relative_to(&self, root: &std::path::Path) -> Self {
        let mut options = self.clone();
        options.style.workspace_root = Some(root.to_owned());
        if let Some(periodic) = &mut options.periodic {
            periodic.style.workspace_root = Some(root.to_owned());
        }
        options
    }
}

/// A traced run and the report written of it.
pub struct Traced {
    pub run: TracedRun,
    pub report: Report,
    /// The report at exit when the blocks could not be classified (sampled or combined): this
    /// one was written, not `report`.
    pub unclassified: Option<Snapshot>,
}

impl Traced {
    /// The outcome when the program failed or its trace is incomplete (and that is not
    /// allowed); `None` when it succeeded and was traced completely.
    pub fn failure(&self, allow_incomplete: bool) -> Option<Outcome> {
        if !self.report.exit.success() {
            return Some(Outcome::ProgramFailed);
        }
        let complete = match &self.unclassified {
            Some(snapshot) => snapshot.incomplete.is_empty(),
            None => self.report.is_complete(),
        };
        if !complete && !allow_incomplete {
            return Some(Outcome::Incomplete);
        }
        None
    }
}

pub fn exec(options: &Options) -> Result<Outcome> {
    options.report.check_outputs()?;
    let traced = trace_and_report(&options.command, &options.report, &options.trace)?;
    Ok(traced.failure(false).unwrap_or(Outcome::Ok))
}

/// Traces `command`, writes its report, and detaches.
pub fn trace_and_report(
    command: &Command,
    options: &ReportOptions,
    trace: &TraceOptions,
) -> Result<Traced> {
    let start = Instant::now();
    let mut tracer = session::load_tracer(trace)?;
    let recording = tracer.recording();
    let printer = events::Printer::start(tracer.take_events()?, Space::User);
    let tracer = Mutex::new(tracer);
    let load = start.elapsed();
    let symbolizer = Symbolizer::new();
    let (started, pid) = channel();
    let (stop, stopped) = channel::<()>();
    let run = std::thread::scope(|scope| {
        let periodic = options.periodic.as_ref().map(|periodic| {
            let tracer = &tracer;
            scope.spawn(move || report_while_running(tracer, periodic, &pid, &stopped))
        });
        let run = session::trace_observed(&tracer, &symbolizer, command, |pid| {
            let _ = started.send(pid);
        });
        drop(stop);
        if let Some(periodic) = periodic {
            let _ = periodic.join();
        }
        run
    });
    if let Some(printer) = printer {
        printer.stop();
    }
    let run = run?;
    let report = report::build(&run, &options.report);
    let unclassified = unclassified_reason(recording).map(|why| at_exit(&run, options, why));
    let rendered = match &unclassified {
        Some(snapshot) => report::render_periodic(snapshot, options.format, &options.style),
        None => report::render(&report, options.format, &options.style),
    };
    match &options.output {
        // Under sudo the files written for the user are the user's, as the program is.
        Some(path) => fsutil::write_atomically(path, rendered.as_bytes(), command.run_as.as_ref())?,
        None => {
            let _ = std::io::stderr().write_all(rendered.as_bytes());
        }
    }
    if let Some(path) = &options.flamegraph {
        let every = report::build(&run, &report::folded::all_stacks(&options.report));
        let lines = report::folded::fold_stacks(&every.stacks);
        report::folded::write_flamegraph(path, &lines, &report.program, command.run_as.as_ref())?;
    }
    // Waits for the probes' removal (see Tracer::detach).
    let start = Instant::now();
    drop(tracer);
    if options.timings {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let phases: Vec<String> = std::iter::once(("load", load))
            .chain(run.timings.phases())
            .chain([("detach", start.elapsed())])
            .map(|(name, took)| format!("{name} {:.1} ms", ms(took)))
            .collect();
        eprintln!("memleak: timings: {}", phases.join(", "));
    }
    Ok(Traced {
        run,
        report,
        unclassified,
    })
}

/// Why the report at exit cannot classify the blocks, when it cannot.
fn unclassified_reason(recording: Recording) -> Option<String> {
    match (recording.sampled(), recording.combined) {
        (_, true) => Some(
            "--combined-only keeps totals per stack, not the addresses a scan needs".to_owned(),
        ),
        (Some(rate), false) => Some(format!(
            "--sample-rate {rate}: a recorded block reached only through an unrecorded one \
             would look lost"
        )),
        (None, false) => None,
    }
}

/// The outstanding allocations at exit, unclassified (see [`unclassified_reason`]).
fn at_exit(run: &TracedRun, options: &ReportOptions, why: String) -> Snapshot {
    let trace = run.trace.clone().unwrap_or_default();
    let report = PeriodicOptions {
        older: Duration::ZERO,
        stacks: options.report.stacks,
        missing_free_is_free: false,
    };
    let frames = |addrs: &[u64]| -> HashMap<u64, Vec<crate::symbolize::Frame>> {
        addrs
            .iter()
            .filter_map(|addr| Some((*addr, run.frames.get(addr)?.clone())))
            .collect()
    };
    let mut snapshot = report::snapshot(&run.program, &trace, &report, |_| None, frames);
    snapshot.at_exit = Some(why);
    snapshot.incomplete.0.extend(run.incomplete.iter().cloned());
    snapshot
}

/// `exec INTERVAL [COUNT]`: once the program runs (its pid comes through `pid`), a report
/// every interval on stdout, until COUNT reports, the program's end (its maps are gone), or
/// `stopped`.
fn report_while_running(
    tracer: &Mutex<Tracer>,
    periodic: &watch::Options,
    pid: &Receiver<u32>,
    stopped: &Receiver<()>,
) {
    let Ok(pid) = pid.recv() else {
        return;
    };
    let symbolizer = Symbolizer::new();
    let start = Instant::now();
    let mut done = 0u64;
    while periodic.count.is_none_or(|count| done < count) {
        let deadline = start + periodic.interval.mul_f64((done + 1) as f64);
        match stopped.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let read = tracer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .read(pid);
        // Its maps go when it is reaped: the report at exit follows.
        let Ok(trace) = read else {
            return;
        };
        let snapshot = report::process_snapshot(pid, pid, &trace, &periodic.report, &symbolizer);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(
            report::render_periodic(&snapshot, periodic.format, &periodic.style).as_bytes(),
        );
        let _ = stdout.flush();
        done += 1;
    }
}
