//! cargo-memleak: finds memory leaks with eBPF uprobes on the allocator.
//!
//! The pipeline, one module per stage, data flowing one way:
//! [`build`] (cargo build with frame pointers) → [`spawn`] (gated, ptraced child) →
//! [`tracer`] (eBPF maps, pid-scoped probes at [`allocator`] entry points) →
//! [`symbolize`] (at the exit stop) → [`report`] (data, then text or JSON).
//! [`session`] strings one traced run together; [`cli`] parses and dispatches.
//! BCC's periodic modes: [`watch`] (reports every interval; `attach` to a running process) and
//! [`kernel`] (tracepoints on the kernel's allocators).

pub mod allocator;
pub mod build;
pub mod classify;
pub mod cli;
pub mod error;
pub mod fsutil;
pub mod gate;
pub mod incomplete;
pub mod kernel;
pub mod outcome;
pub mod report;
pub mod scan;
pub mod session;
pub mod spawn;
pub mod symbolize;
pub mod testrun;
pub mod tracer;
pub mod watch;

pub use cli::main_with_args;
