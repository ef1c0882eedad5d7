//! The human output, libtest's layout: `running N tests`, one `test [binary id] name ... ok`
//! line per test as it finishes (nextest's `SLOW` and `LEAK` lines beside them), then every
//! failure with its lost stacks and the command that reruns it alone, the `failures:` list and
//! the `test result:` line; the baseline's stale entries and unused suppressions after it.
//!
//! Invariants: libtest's lines on stdout, cargo-memleak's own notes (`memleak: ...`) on
//! stderr; a failure's heading, its place in the `failures:` list and its rerun command all
//! carry the binary id; below a test's own frames libtest's harness is left out, and by
//! default the allocator's frames above them (the baseline's stack-key cut).

use std::{fmt::Write as _, io::Write as _, sync::Mutex};

use super::{Reporter, TestEvent};
use crate::{
    error::Result,
    gate::{ChildVerdict, StaleEntry},
    report::{
        Amount, LeakSummary, Stack,
        text::{Short, write_amount, write_test_stack},
    },
    testrun::{Display, TestOptions, TestResult, run::Stats},
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
                    let word = if failed {
                        self.paint("FAILED", 31)
                    } else {
                        self.paint("ok", 32)
                    };
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
                out.push('\n');
                out.push_str(&self.summary(stats));
                out.push_str("\n\n");
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

/// The followed processes that ran one executable: each with its command line and how it
/// ended, then their lost stacks and summary, when they lost something.
pub fn write_child(out: &mut String, child: &ChildVerdict, top: usize, style: &Short) {
    for process in &child.processes {
        let _ = writeln!(
            out,
            "child process {} `{}`: {}",
            process.pid, process.command, process.fate
        );
    }
    if child.lost.blocks > 0 {
        write_lost(
            out,
            &child.stacks,
            &child.leak_summary,
            child.suppressed,
            top,
            style,
        );
    }
}

/// The first `top` lost stacks, then memcheck's summary lines.
fn write_lost(
    out: &mut String,
    stacks: &[Stack],
    summary: &LeakSummary,
    suppressed: Amount,
    top: usize,
    style: &Short,
) {
    for stack in stacks.iter().take(top) {
        write_test_stack(out, stack, style);
    }
    if stacks.len() > top {
        let _ = writeln!(out, "\t({} more stacks)", stacks.len() - top);
    }
    for (words, amount) in [
        ("definitely lost", summary.definitely_lost),
        ("indirectly lost", summary.indirectly_lost),
        ("still reachable", summary.still_reachable),
        ("suppressed", suppressed),
    ] {
        write_amount(out, words, amount);
    }
}

/// The command that runs one test alone: `cargo memleak test [OPTIONS] -p alpha --test gate
/// -- --exact leaks_a_vec`, with the options of this run that change what is judged
/// (`rerun_args`: `--manifest-path`, `--baseline`, ...).
pub fn rerun_command(binary_id: &str, test: &str, ignored: bool, rerun_args: &[String]) -> String {
    let (package, target) = binary_id.split_once("::").unwrap_or((binary_id, ""));
    let target = match target.split_once('/') {
        None if target.is_empty() => "--lib".to_owned(),
        None => format!("--test {}", quote(target)),
        Some((kind, name)) => format!("--{kind} {}", quote(name)),
    };
    let mut command = String::from("cargo memleak test");
    for arg in rerun_args {
        command.push(' ');
        command.push_str(&quote(arg));
    }
    let _ = write!(
        command,
        " -p {} {target} -- --exact {}",
        quote(package),
        quote(test)
    );
    if ignored {
        command.push_str(" --ignored");
    }
    command
}

/// A word as a POSIX shell reads it back: as is when it is plain, else single-quoted.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:./=+,@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What goes under a failed test's heading: the reasons, the lost stacks, the summary, when
/// the test itself failed its output, and the command that reruns it alone.
pub fn failure_message(
    result: &TestResult,
    top: usize,
    style: &Short,
    rerun_args: &[String],
) -> Option<String> {
    if result.failures.is_empty() {
        return None;
    }
    let mut out = String::new();
    for failure in &result.failures.0 {
        let _ = writeln!(out, "memleak: {failure}");
    }
    // The summary is shown even when nothing was lost (a test that failed by itself).
    let shown: &[Stack] = if result.lost.blocks > 0 {
        &result.stacks
    } else {
        &[]
    };
    write_lost(
        &mut out,
        shown,
        &result.leak_summary,
        result.suppressed,
        top,
        style,
    );
    for child in &result.children {
        write_child(&mut out, child, top, style);
    }
    if result.failures.unmeasured()
        && let Some(output) = &result.output
        && !output.is_empty()
    {
        out.push_str("---- output ----\n");
        out.push_str(output);
        if !output.ends_with('\n') {
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "rerun: {}",
        rerun_command(&result.binary_id, &result.test, result.ignored, rerun_args)
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::rerun_command;

    #[test]
    fn rerun_commands_name_the_target_of_the_binary_id() {
        assert_eq!(
            rerun_command("alpha::gate", "leaks_a_vec", false, &[]),
            "cargo memleak test -p alpha --test gate -- --exact leaks_a_vec"
        );
        assert_eq!(
            rerun_command("beta", "tests::ignored_leak", true, &[]),
            "cargo memleak test -p beta --lib -- --exact tests::ignored_leak --ignored"
        );
        assert_eq!(
            rerun_command(
                "beta::bin/beta",
                "it's",
                false,
                &["--manifest-path".into(), "/a b/Cargo.toml".into()]
            ),
            "cargo memleak test --manifest-path '/a b/Cargo.toml' -p beta --bin beta -- \
             --exact 'it'\\''s'"
        );
    }
}
