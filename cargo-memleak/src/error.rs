//! The errors cargo-memleak reports, each with the exit code it maps to.
//!
//! Every variant renders as one line that says what went wrong and, where the fix is known,
//! what to do. The exit codes are documented in the README; keep the two in step.

use std::path::PathBuf;

/// Exit codes. Part of the CLI contract (README, "Exit codes").
pub mod exit {
    /// The traced program succeeded and the trace is complete.
    pub const OK: u8 = 0;
    /// The traced program failed: it exited non-zero or was killed by a signal.
    pub const PROGRAM_FAILED: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// The trace is incomplete: the tracer dropped data (see the summary's counters).
    pub const INCOMPLETE: u8 = 3;
    /// `cargo memleak test`: no test matched the filters.
    pub const NO_TESTS: u8 = 4;
    /// The baseline or a suppressions file is malformed.
    pub const BAD_BASELINE: u8 = 96;
    /// Tests failed, or lost memory over its budget (`test`, and `run` over budget).
    pub const FAILED: u8 = 100;
    /// Listing a test binary's tests failed.
    pub const LISTING_FAILED: u8 = 104;
    /// Not enough privileges (root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE).
    pub const PRIVILEGES: u8 = 77;
    /// The kernel cannot do what is needed (BPF, uprobes), or the allocator was not found.
    pub const UNAVAILABLE: u8 = 69;
    /// Any other failure of cargo-memleak itself.
    pub const INTERNAL: u8 = 70;
    /// The cargo build failed.
    pub const BUILD_FAILED: u8 = 101;
    /// `cargo metadata` failed.
    pub const METADATA_FAILED: u8 = 102;
    /// The program cannot be executed.
    pub const NOT_EXECUTABLE: u8 = 126;
    /// The program (or, for `attach`, the process) was not found.
    pub const NOT_FOUND: u8 = 127;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing privileges: {missing}; run as root (sudo) or grant them with \
         `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep {exe}`"
    )]
    Privileges { missing: String, exe: String },

    #[error("program not found: `{program}`; check the name, or give a path")]
    ProgramNotFound { program: String },

    #[error("no process with pid {pid}; check the number with `ps -p {pid}`")]
    NoProcess { pid: u32 },

    #[error("cannot execute `{}`: {reason}", program.display())]
    NotExecutable { program: PathBuf, reason: String },

    #[error(
        "no libc found in this process's memory map; pass the allocator's shared object with \
         --allocator-object PATH"
    )]
    NoLibc,

    #[error("allocator object {}: {reason}", path.display())]
    AllocatorObject { path: PathBuf, reason: String },

    #[error("loading the eBPF programs failed: {reason}; {hint}")]
    BpfLoad { reason: String, hint: &'static str },

    #[error("attaching a uprobe to {symbol} in {} failed: {reason}; {hint}", object.display())]
    Attach {
        symbol: String,
        object: PathBuf,
        reason: String,
        hint: &'static str,
    },

    #[error("kernel tracepoints: {reason}")]
    Tracefs { reason: String },

    #[error("reading the tracer's maps for pid {pid} failed: {reason}")]
    MapRead { pid: u32, reason: String },

    #[error("{operation} failed for pid {pid}: {source}")]
    Ptrace {
        operation: &'static str,
        pid: i32,
        source: nix::Error,
    },

    #[error("starting `{}` failed: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: nix::Error,
    },

    #[error("`cargo metadata` failed: {stderr}")]
    Metadata { stderr: String },

    #[error("cargo build failed{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Build { detail: String },

    #[error("{0}")]
    Selection(String),

    #[error("{}:{line}:{column}: {message}", path.display())]
    Baseline {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("listing the tests of {} failed: {detail}", binary.display())]
    Listing { binary: PathBuf, detail: String },

    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Privileges { .. } => exit::PRIVILEGES,
            Error::ProgramNotFound { .. } | Error::NoProcess { .. } => exit::NOT_FOUND,
            Error::NotExecutable { .. } => exit::NOT_EXECUTABLE,
            Error::NoLibc
            | Error::AllocatorObject { .. }
            | Error::BpfLoad { .. }
            | Error::Attach { .. }
            | Error::Tracefs { .. } => exit::UNAVAILABLE,
            Error::Metadata { .. } => exit::METADATA_FAILED,
            Error::Build { .. } => exit::BUILD_FAILED,
            Error::Selection(_) => exit::USAGE,
            Error::Baseline { .. } => exit::BAD_BASELINE,
            Error::Listing { .. } => exit::LISTING_FAILED,
            Error::MapRead { .. }
            | Error::Ptrace { .. }
            | Error::Spawn { .. }
            | Error::Write { .. }
            | Error::Io { .. } => exit::INTERNAL,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
