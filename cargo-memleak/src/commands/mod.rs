//! The drivers: one per subcommand, each taking its validated options (built by [`crate::cli`])
//! and returning how it came out ([`Outcome`]), or the error that stopped it.
//!
//! Invariants: a driver does no argument checking (that happened before it was called) and
//! prints nothing a reporter or renderer should; every path out of a driver that attached
//! probes detaches them.

pub mod attach;
pub mod exec;
pub mod kernel;
pub mod run;
pub mod test;
pub mod wrap;

use crate::{error::Result, outcome::Outcome, privileges::Needs};

/// A subcommand with its validated options.
#[derive(Debug)]
pub enum Command {
    Exec(Box<exec::Options>),
    Run(Box<run::Options>),
    Test(Box<test::Options>),
    Attach(attach::Options),
    Kernel(kernel::Options),
    Wrap(Box<wrap::Options>),
}

impl Command {
    /// What it does that takes privileges.
    pub fn needs(&self) -> Needs {
        match self {
            Command::Kernel(_) => Needs::Tracepoints,
            // `--list` and `--no-run` only build and list: nothing is traced.
            Command::Test(options) if options.mode != test::Mode::Run => Needs::Nothing,
            Command::Exec(_)
            | Command::Run(_)
            | Command::Test(_)
            | Command::Attach(_)
            | Command::Wrap(_) => Needs::Uprobes,
        }
    }
}

/// Runs `command` to its end.
pub fn run(command: Command) -> Result<Outcome> {
    crate::privileges::check(command.needs())?;
    match command {
        Command::Exec(options) => exec::exec(&options),
        Command::Run(options) => run::run(&options),
        Command::Test(options) => test::test(&options),
        Command::Attach(options) => attach::attach(&options),
        Command::Kernel(options) => kernel::kernel(&options),
        Command::Wrap(options) => wrap::wrap(&options),
    }
}
