//! The text under a failed test's heading, which the human output and JUnit's failure
//! element both show: the reasons, the lost stacks, memcheck's summary, the test's own output
//! when it failed by itself, and the command that runs it again alone.

use std::fmt::Write as _;

use crate::{
    gate::{ChildVerdict, OverBudget},
    report::{
        Amount, LeakSummary, LostCycle, Stack,
        text::{Short, cycle_line, heap_line, render_short_frame, write_amount, write_test_stack},
        user_frames,
    },
    testrun::TestResult,
};

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
            &child.cycles,
            &child.leak_summary,
            child.suppressed,
            top,
            style,
        );
    }
}

/// The first `top` lost stacks, the cycles among lost blocks, then memcheck's summary lines.
fn write_lost(
    out: &mut String,
    stacks: &[Stack],
    cycles: &[LostCycle],
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
    for cycle in cycles {
        let _ = writeln!(
            out,
            "\t{}",
            cycle_line(cycle, style.workspace_root.as_deref())
        );
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
        None if target == crate::build::doctests::DOC_TESTS => "--doc".to_owned(),
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
        if shown.is_empty() {
            &[]
        } else {
            &result.cycles
        },
        &result.leak_summary,
        result.suppressed,
        top,
        style,
    );
    if let Some(heap) = &result.heap {
        let root = style.workspace_root.as_deref();
        let _ = writeln!(out, "memleak: {}", heap_line(heap, root));
        let over_peak = result
            .judgement
            .over_budget
            .iter()
            .any(|over| matches!(over, OverBudget::Peak { .. }));
        if over_peak && !heap.peak_stack.is_empty() {
            let _ = writeln!(out, "\tthe peak was reached by the allocation from");
            let shown = user_frames(&heap.peak_stack);
            for frame in &heap.peak_stack[shown] {
                let _ = writeln!(out, "\t\t{}", render_short_frame(frame, root));
            }
        }
    }
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
