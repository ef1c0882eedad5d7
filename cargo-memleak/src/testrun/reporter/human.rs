//! The human output, libtest's layout: `running N tests`, one `test [binary id] name ... ok`
//! line per test as it finishes (nextest's `SLOW` and `LEAK` lines beside them), then every
//! failure with its lost stacks and the command that reruns it alone, the `failures:` list and
//! the `test result:` line; the baseline's stale entries and unused suppressions after it.
//!
//! Invariants: libtest's lines on stdout, cargo-memleak's own notes (`memleak: ...`) on
//! stderr; a failure's heading, its place in the `failures:` list and its rerun command all
//! carry the binary id; below a test's own frames libtest's harness is left out, and by
//! default the allocator's frames above them (the baseline's stack-key cut).

use std::{fmt::Write as _, io::Write as _, sync::Mutex, time::Duration};

use super::{Reporter, TestEvent, failure::failure_message};
use crate::{
    error::Result,
    gate::StaleEntry,
    report::text::Short,
    testrun::{Display, Stats, TestOptions, result::TestTimings},
};

/// The human reporter.
pub struct Human {
    display: Display,
    top: usize,
    style: Short,
    rerun_args: Vec<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Widths of `[binary id]` and of test names, for aligned lines (libtest-mimic's layout).
    id_width: usize,
    name_width: usize,
    /// Each failed test's `(binary id, test)`, heading and text, in the order they finished
    /// (printed sorted, so that a log does not depend on which test finished first).
    failures: Vec<((String, String), String, String)>,
    /// Each flaky test's `(binary id, test)` and its line for the `flaky:` list.
    flaky: Vec<((String, String), String)>,
    /// `--timings`: the tests' phases summed, and how many tests they are of.
    timings: Option<(TestTimings, Duration, u64)>,
}

impl Human {
    pub fn new(options: &TestOptions, style: Short) -> Self {
        Self {
            display: options.display,
            top: options.top,
            style,
            rerun_args: options.rerun_args.clone(),
            state: Mutex::new(State::default()),
        }
    }

    fn paint(&self, word: &str, color: u8) -> String {
        if self.display.color {
            format!("\x1b[{color}m{word}\x1b[0m")
        } else {
            word.to_owned()
        }
    }

    fn line(&self, state: &State, binary_id: &str, test: &str, word: &str) -> String {
        format!(
            "test {:<id$} {:<name$} ... {word}\n",
            format!("[{binary_id}]"),
            test,
            id = state.id_width,
            name = state.name_width,
        )
    }
}

fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

impl Reporter for Human {
    fn report(&self, event: &TestEvent) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *event {
            TestEvent::RunStarted { tests, ignored, .. } => {
                for (binary_id, test) in tests.iter().chain(ignored) {
                    state.id_width = state.id_width.max(binary_id.len() + 2);
                    state.name_width = state.name_width.max(test.len());
                }
                let mut out = format!(
                    "\nrunning {} test{}\n",
                    tests.len(),
                    if tests.len() == 1 { "" } else { "s" }
                );
                if !self.display.quiet {
                    for (binary_id, test) in ignored {
                        out.push_str(&self.line(
                            &state,
                            binary_id,
                            test,
                            &self.paint("ignored", 33),
                        ));
                    }
                }
                print(&out);
            }
            TestEvent::TestStarted { .. } => {}
            TestEvent::TestSlow {
                binary_id,
                test,
                elapsed,
            } => print(&format!(
                "    SLOW [>{}s] [{binary_id}] {test}\n",
                // Whole seconds as such (`>60s`), a fraction to a tenth (`>1.5s`).
                if elapsed.subsec_millis() == 0 {
                    elapsed.as_secs().to_string()
                } else {
                    format!("{:.1}", elapsed.as_secs_f64())
                }
            )),
            TestEvent::TestFinished { result } => {
                let failed = !result.failures.is_empty();
                let mut out = String::new();
                if failed || !self.display.quiet {
                    let mut word = if failed {
                        self.paint("FAILED", 31)
                    } else {
                        self.paint("ok", 32)
                    };
                    if result.attempts > 1 {
                        let _ = write!(word, " ({})", attempts(result.attempts, failed));
                    }
                    out.push_str(&self.line(&state, &result.binary_id, &result.test, &word));
                }
                if result.left_processes {
                    let _ = writeln!(
                        out,
                        "    LEAK [{}] {}: processes it started outlived it; they were killed",
                        result.binary_id, result.test
                    );
                }
                if self.display.verbose
                    && !failed
                    && let Some(output) = result.output.as_deref().filter(|o| !o.is_empty())
                {
                    let _ = writeln!(
                        out,
                        "---- [{}] {} output ----",
                        result.binary_id, result.test
                    );
                    out.push_str(output);
                    if !output.ends_with('\n') {
                        out.push('\n');
                    }
                }
                print(&out);
                if let Some(timings) = &result.timings {
                    let (sum, total, tests) = state.timings.get_or_insert_default();
                    sum.add(timings);
                    *total += Duration::from_secs_f64(result.duration_ms / 1e3);
                    *tests += 1;
                }
                if result.flaky() {
                    let tries: Vec<String> = result
                        .earlier_attempts
                        .iter()
                        .enumerate()
                        .map(|(at, attempt)| {
                            format!("attempt {}: {}", at + 1, attempt.failures.joined())
                        })
                        .collect();
                    state.flaky.push((
                        (result.binary_id.clone(), result.test.clone()),
                        format!(
                            "    [{}] {}: passed on attempt {}; {}",
                            result.binary_id,
                            result.test,
                            result.attempts,
                            tries.join("; ")
                        ),
                    ));
                }
                if let Some(message) =
                    failure_message(result, self.top, &self.style, &self.rerun_args)
                {
                    state.failures.push((
                        (result.binary_id.clone(), result.test.clone()),
                        format!("[{}] {}", result.binary_id, result.test),
                        message,
                    ));
                }
            }
            TestEvent::Interrupted { signal, running } => {
                eprintln!(
                    "memleak: interrupted by {}: no more tests start, the {running} running \
                     were killed with their process groups; send it again to exit at once",
                    signal.name()
                );
            }
            TestEvent::TestsFinished {
                stats,
                stale,
                unused,
            } => {
                let mut out = String::new();
                state.failures.sort_by(|a, b| a.0.cmp(&b.0));
                if !state.failures.is_empty() {
                    out.push_str("\nfailures:\n\n");
                    for (_, heading, message) in &state.failures {
                        let _ = writeln!(out, "---- {heading} ----");
                        out.push_str(message);
                        out.push('\n');
                    }
                    out.push_str("\nfailures:\n");
                    for (_, heading, _) in &state.failures {
                        let _ = writeln!(out, "    {heading}");
                    }
                }
                state.flaky.sort_by(|a, b| a.0.cmp(&b.0));
                if !state.flaky.is_empty() {
                    out.push_str("\nflaky (passed on a retry):\n");
                    for (_, line) in &state.flaky {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                out.push('\n');
                out.push_str(&self.summary(stats));
                out.push_str("\n\n");
                if let Some((sum, total, tests)) = &state.timings {
                    out.push_str(&timings_summary(sum, *total, *tests, stats.elapsed));
                }
                print(&out);
                for StaleEntry { binary_id, test } in stale {
                    eprintln!(
                        "memleak: stale baseline entry {binary_id}{}: no such {} any more; \
                         --bless removes it",
                        test.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
                        if test.is_some() {
                            "test"
                        } else {
                            "test binary"
                        },
                    );
                }
                for pattern in unused {
                    eprintln!("memleak: unused suppression `{pattern}`: it matched no stack");
                }
            }
            TestEvent::RunFinished { .. } => {}
        }
        Ok(())
    }
}

/// What a retried test's line adds: `flaky: passed on attempt 2 of 2`, or `3 attempts`.
fn attempts(attempts: u32, failed: bool) -> String {
    if failed {
        format!("{attempts} attempts")
    } else {
        format!("flaky: passed on attempt {attempts}")
    }
}

/// `--timings`' totals: each phase's mean per test, and the worker time against the wall.
fn timings_summary(sum: &TestTimings, total: Duration, tests: u64, wall: Duration) -> String {
    let mean = |duration: Duration| duration.as_secs_f64() * 1e3 / tests.max(1) as f64;
    let mut phases: Vec<String> = sum
        .trace
        .phases()
        .into_iter()
        .chain([("judge", sum.judge)])
        .map(|(name, duration)| format!("{name} {:.1}", mean(duration)))
        .collect();
    let counted: Duration =
        sum.trace.phases().iter().map(|(_, d)| *d).sum::<Duration>() + sum.judge;
    phases.push(format!("other {:.1}", mean(total.saturating_sub(counted))));
    format!(
        "memleak: timings: {tests} tests, ms per test: {}; {:.1} ms per test in all, {:.2} s of \
         worker time in {:.2} s\n\n",
        phases.join(", "),
        mean(total),
        total.as_secs_f64(),
        wall.as_secs_f64()
    )
}

impl Human {
    /// libtest's `test result:` line, marked when the run was interrupted or cut short by
    /// `--fail-fast`, with the tests that never started.
    fn summary(&self, stats: &Stats) -> String {
        let verdict = if stats.failed > 0 || stats.interrupted.is_some() {
            self.paint("FAILED", 31)
        } else {
            self.paint("ok", 32)
        };
        let why = match (stats.interrupted, stats.cancelled) {
            (Some(signal), _) => format!(" (interrupted by {})", signal.name()),
            (None, true) => " (--fail-fast)".to_owned(),
            (None, false) => String::new(),
        };
        let not_run = if stats.not_run > 0 {
            format!("{} not run; ", stats.not_run)
        } else {
            String::new()
        };
        format!(
            "test result: {verdict}{why}. {} passed; {} failed; {} ignored; 0 measured; {} \
             filtered out; {not_run}finished in {:.2}s",
            stats.passed,
            stats.failed,
            stats.ignored,
            stats.filtered_out,
            stats.elapsed.as_secs_f64()
        )
    }
}
