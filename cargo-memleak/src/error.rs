//! The errors cargo-memleak reports, each with the exit code it maps to.
//!
//! Every variant renders as one line that says what went wrong and, where the fix is known,
//! what to do. Each maps to a row of the one exit-code table, [`crate::outcome::TABLE`].

use std::path::PathBuf;

use crate::outcome::{self, ExitCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing capabilities: {missing}; run as root (sudo), or grant them to the binary with \
         `{setcap}`"
    )]
    Privileges { missing: String, setcap: String },

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

    #[error("collecting doc tests: {0}")]
    DocTests(String),

    #[error("{0}")]
    Selection(String),

    #[error("{}:{line}:{column}: {message}", path.display())]
    Baseline {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{what} {}: {reason}", path.display())]
    GateFile {
        path: PathBuf,
        what: &'static str,
        reason: String,
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
    pub fn exit_code(&self) -> &'static ExitCode {
        match self {
            Error::Privileges { .. } => &outcome::PRIVILEGES,
            Error::ProgramNotFound { .. } | Error::NoProcess { .. } => &outcome::NOT_FOUND,
            Error::NotExecutable { .. } => &outcome::NOT_EXECUTABLE,
            Error::NoLibc
            | Error::AllocatorObject { .. }
            | Error::BpfLoad { .. }
            | Error::Attach { .. }
            | Error::Tracefs { .. } => &outcome::UNAVAILABLE,
            Error::Metadata { .. } => &outcome::METADATA_FAILED,
            Error::Build { .. } | Error::DocTests(_) => &outcome::BUILD_FAILED,
            Error::Selection(_) => &outcome::USAGE,
            Error::Baseline { .. } | Error::GateFile { .. } => &outcome::BAD_BASELINE,
            Error::Listing { .. } => &outcome::LISTING_FAILED,
            Error::MapRead { .. }
            | Error::Ptrace { .. }
            | Error::Spawn { .. }
            | Error::Write { .. }
            | Error::Io { .. } => &outcome::INTERNAL,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
