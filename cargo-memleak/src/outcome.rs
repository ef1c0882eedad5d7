//! How a command ended, and the exit code that says so: the one table of exit codes.
//!
//! A command that ran to its end returns an [`Outcome`]; one that could not is an
//! [`Error`](crate::error::Error). Both map to a row of [`TABLE`] here and nowhere else.
//! `cargo memleak --help` lists the table; the subcommands' help texts and the README's tables
//! are written for their readers and checked against it by tests (here and in `cli`).
//!
//! Invariants: every code cargo-memleak exits with is a row of [`TABLE`], in ascending order;
//! each row names the commands that can return it.

use std::fmt::Write as _;

/// The subcommands, for saying which of them return a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Exec,
    Run,
    Test,
    Attach,
    Kernel,
    Wrap,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Exec,
        Command::Run,
        Command::Test,
        Command::Attach,
        Command::Kernel,
        Command::Wrap,
    ];

    /// The subcommand's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Command::Exec => "exec",
            Command::Run => "run",
            Command::Test => "test",
            Command::Attach => "attach",
            Command::Kernel => "kernel",
            Command::Wrap => "wrap",
        }
    }
}

/// One exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct ExitCode {
    pub code: u8,
    /// Its meaning, in the words of `cargo memleak --help`.
    pub summary: &'static str,
    /// The commands that can exit with it.
    pub commands: &'static [Command],
}

use Command::{Attach, Exec, Kernel, Run, Test, Wrap};

const EVERY: &[Command] = &Command::ALL;
const TRACE_A_PROGRAM: &[Command] = &[Exec, Run];
const GATED: &[Command] = &[Run, Test, Wrap];
const BUILDING: &[Command] = &[Run, Test];

/// The command succeeded: the traced program succeeded and its trace is complete (and within
/// its budget), every test passed, or every periodic report was complete.
pub const OK: ExitCode = ExitCode {
    code: 0,
    summary: "ok",
    commands: EVERY,
};
/// The traced program failed: it exited non-zero or was killed by a signal.
pub const PROGRAM_FAILED: ExitCode = ExitCode {
    code: 1,
    summary: "the program failed",
    commands: TRACE_A_PROGRAM,
};
/// Bad command line.
pub const USAGE: ExitCode = ExitCode {
    code: 2,
    summary: "usage",
    commands: EVERY,
};
/// The trace is incomplete: the tracer dropped data, or the exit scan could not see everything.
pub const INCOMPLETE: ExitCode = ExitCode {
    code: 3,
    summary: "trace incomplete",
    commands: &[Exec, Run, Attach, Kernel],
};
/// `cargo memleak test`: no test matched the filters.
pub const NO_TESTS: ExitCode = ExitCode {
    code: 4,
    summary: "no tests matched",
    commands: &[Test],
};
/// The kernel cannot do what is needed (BPF, uprobes, tracepoints), or the allocator was not
/// found.
pub const UNAVAILABLE: ExitCode = ExitCode {
    code: 69,
    summary: "kernel support or allocator missing",
    commands: EVERY,
};
/// Any other failure of cargo-memleak itself.
pub const INTERNAL: ExitCode = ExitCode {
    code: 70,
    summary: "internal error",
    commands: EVERY,
};
/// Missing capabilities (see [`crate::privileges`] for what each mode needs).
pub const PRIVILEGES: ExitCode = ExitCode {
    code: 77,
    summary: "privileges",
    commands: EVERY,
};
/// The baseline or a suppressions file is malformed.
pub const BAD_BASELINE: ExitCode = ExitCode {
    code: 96,
    summary: "malformed baseline or suppressions",
    commands: GATED,
};
/// Tests failed, or lost memory over its budget (`test`, `wrap`, and `run` over budget).
pub const FAILED: ExitCode = ExitCode {
    code: 100,
    summary: "tests failed or leaks over budget",
    commands: GATED,
};
/// The cargo build failed.
pub const BUILD_FAILED: ExitCode = ExitCode {
    code: 101,
    summary: "build failed",
    commands: BUILDING,
};
/// `cargo metadata` failed.
pub const METADATA_FAILED: ExitCode = ExitCode {
    code: 102,
    summary: "cargo metadata failed",
    commands: BUILDING,
};
/// Listing a test binary's tests failed.
pub const LISTING_FAILED: ExitCode = ExitCode {
    code: 104,
    summary: "listing tests failed",
    commands: &[Test],
};
/// The program cannot be executed.
pub const NOT_EXECUTABLE: ExitCode = ExitCode {
    code: 126,
    summary: "not executable",
    commands: &[Exec, Run, Wrap],
};
/// The program (or, for `attach`, the process) was not found.
pub const NOT_FOUND: ExitCode = ExitCode {
    code: 127,
    summary: "program (or, for attach, process) not found",
    commands: &[Exec, Run, Attach, Wrap],
};
/// `cargo memleak test`: interrupted by SIGINT (Ctrl-C), after the results so far were
/// reported (128 + 2, the shell's convention).
pub const INTERRUPTED: ExitCode = ExitCode {
    code: 130,
    summary: "interrupted (SIGINT)",
    commands: &[Test, Wrap],
};
/// `cargo memleak test`: stopped by SIGTERM, after the results so far were reported (128 +
/// 15).
pub const TERMINATED: ExitCode = ExitCode {
    code: 143,
    summary: "terminated (SIGTERM)",
    commands: &[Test, Wrap],
};

/// Every exit code, ascending. Part of the CLI contract (README, "Exit codes").
pub const TABLE: [&ExitCode; 17] = [
    &OK,
    &PROGRAM_FAILED,
    &USAGE,
    &INCOMPLETE,
    &NO_TESTS,
    &UNAVAILABLE,
    &INTERNAL,
    &PRIVILEGES,
    &BAD_BASELINE,
    &FAILED,
    &BUILD_FAILED,
    &METADATA_FAILED,
    &LISTING_FAILED,
    &NOT_EXECUTABLE,
    &NOT_FOUND,
    &INTERRUPTED,
    &TERMINATED,
];

/// The codes `command` can exit with, ascending.
pub fn codes_of(command: Command) -> Vec<u8> {
    TABLE
        .iter()
        .filter(|row| row.commands.contains(&command))
        .map(|row| row.code)
        .collect()
}

/// `Exit codes: 0 ok, 1 the program failed, ...`: the table, for `cargo memleak --help`.
pub fn help() -> String {
    let mut out = String::from("Exit codes: ");
    for (index, row) in TABLE.iter().enumerate() {
        let separator = if index == 0 { "" } else { ", " };
        let _ = write!(out, "{separator}{} {}", row.code, row.summary);
    }
    out.push('.');
    out
}

/// How a command that ran to its end came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything passed.
    Ok,
    /// The traced program failed.
    ProgramFailed,
    /// A trace (or a periodic report) was incomplete.
    Incomplete,
    /// `test`: no test matched.
    NoTests,
    /// `test`: a test failed; `run`: the program lost more than its budget.
    Failed,
    /// `test`: SIGINT or SIGTERM stopped the run (the results so far were reported).
    Interrupted(Signal),
}

impl Outcome {
    pub fn exit_code(self) -> &'static ExitCode {
        match self {
            Outcome::Ok => &OK,
            Outcome::ProgramFailed => &PROGRAM_FAILED,
            Outcome::Incomplete => &INCOMPLETE,
            Outcome::NoTests => &NO_TESTS,
            Outcome::Failed => &FAILED,
            Outcome::Interrupted(Signal::Int) => &INTERRUPTED,
            Outcome::Interrupted(Signal::Term) => &TERMINATED,
        }
    }
}

/// The signal that interrupted a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Signal {
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGTERM")]
    Term,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Signal::Int => nix::libc::SIGINT,
            Signal::Term => nix::libc::SIGTERM,
        }
    }

    /// The shell's convention, 128 + the signal's number (130, 143): what the run exits with.
    pub fn exit_code(self) -> u8 {
        128 + self.number() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ascending_and_every_command_has_its_codes() {
        let codes: Vec<u8> = TABLE.iter().map(|row| row.code).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted, "ascending, each once");
        assert_eq!(codes_of(Command::Kernel), [0, 2, 3, 69, 70, 77]);
        assert_eq!(
            codes_of(Command::Test),
            [0, 2, 4, 69, 70, 77, 96, 100, 101, 102, 104, 130, 143]
        );
    }

    /// The codes in the first column of each table of the README's "Exit codes" section, by the
    /// commands its heading names (`` `cargo memleak exec` and `run`: ``).
    fn readme_tables() -> Vec<(Vec<Command>, Vec<u8>)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .expect("the README has an Exit codes section");
        let section = section.split("\n## ").next().unwrap_or_default();
        let mut tables: Vec<(Vec<Command>, Vec<u8>)> = Vec::new();
        for line in section.lines() {
            if line.starts_with("`cargo memleak") && line.ends_with(':') {
                let commands = line
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|quoted| {
                        let name = quoted.rsplit(' ').next().unwrap_or_default();
                        *Command::ALL
                            .iter()
                            .find(|command| command.name() == name)
                            .unwrap_or_else(|| panic!("a command in {line:?}"))
                    })
                    .collect();
                tables.push((commands, Vec::new()));
            } else if let Some(row) = line.strip_prefix("| ") {
                let first = row.split(" |").next().unwrap_or_default();
                let Some((_, codes)) = tables.last_mut() else {
                    panic!("a table row before any heading: {line:?}");
                };
                codes.extend(
                    first
                        .split(", ")
                        .filter_map(|code| code.trim().parse::<u8>().ok()),
                );
            }
        }
        tables
    }

    #[test]
    fn the_readme_tables_list_exactly_the_codes_of_their_commands() {
        let tables = readme_tables();
        let mut covered: Vec<Command> = Vec::new();
        for (commands, listed) in &tables {
            let mut listed = listed.clone();
            listed.sort_unstable();
            let mut expected: Vec<u8> = commands.iter().flat_map(|&c| codes_of(c)).collect();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(listed, expected, "README table for {commands:?}");
            covered.extend(commands);
        }
        covered.sort_by_key(|command| command.name());
        let mut all = Command::ALL.to_vec();
        all.sort_by_key(|command| command.name());
        assert_eq!(covered, all, "every command has one README table");
    }

    #[test]
    fn the_help_lists_the_whole_table() {
        assert!(help().starts_with("Exit codes: 0 ok, 1 the program failed, 2 usage,"));
        assert!(help().ends_with(", 143 terminated (SIGTERM)."));
    }
}
