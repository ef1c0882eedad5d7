//! Why a trace is incomplete, as data: each reason is a variant a JSON user can branch on, and
//! its `Display` is the sentence a person reads (blazesym's `Symbolized::Unknown(Reason)`).
//!
//! Reports serialize a list of reasons twice ([`Reasons`]): `incomplete`, the sentences (the
//! field JSON users had first), and `incomplete_reasons`, the same reasons as objects tagged by
//! `kind`.
//!
//! Invariants: an empty list means the trace is complete; the sentences never change for a
//! given reason (they are part of the output that tests and users compare).

use std::path::PathBuf;

use memleak_common::Counter;
use serde::{Serialize, Serializer, ser::SerializeMap as _};

use crate::scan::Gap;

/// One reason a trace is incomplete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Incomplete {
    /// A tracer counter that lost data was not zero.
    Dropped {
        #[serde(serialize_with = "counter_name")]
        counter: Counter,
        n: u64,
    },
    /// The process ended without an exit stop (killed by SIGKILL?), so its outstanding
    /// allocations could not be read.
    NoExitStop,
    /// The stopped process's memory map could not be read: nothing was scanned.
    MemoryMapUnreadable { error: String },
    /// The program never loaded the traced allocator object.
    AllocatorNotLoaded { allocator: PathBuf },
    /// The executable's Rust allocations (its `#[global_allocator]`) could not be traced.
    RustAllocationsNotTraced { executable: PathBuf, why: String },
    /// The executable defines malloc itself, so its C allocations never reach the probed
    /// allocator object, and its own could not be probed (`why`).
    DefinesMalloc {
        executable: PathBuf,
        probed: PathBuf,
        why: String,
    },
    /// An allocator the executable defines and that is known by its symbols (jemalloc,
    /// mimalloc, `--symbols-prefix`) could not be probed.
    KnownAllocatorNotProbed {
        name: String,
        executable: PathBuf,
        error: String,
    },
    /// A forked child's copy of its parent's outstanding blocks could not be made.
    NotInherited { error: String },
    /// A followed child's tracing could not start over after its exec.
    NotRestarted { error: String },
    /// A followed child's trace could not be read at its exit stop.
    TraceUnreadable { error: String },
    /// A followed child could not be traced at all.
    ChildUntraced {
        pid: u32,
        executable: String,
        error: String,
    },
    /// A followed child's trace is incomplete.
    Child {
        pid: u32,
        executable: String,
        reason: Box<Incomplete>,
    },
    /// A root the leak scan could not see while something was lost (serialized as the gap
    /// itself: `thread_registers`, `thread_stack` or `unreadable`).
    #[serde(untagged)]
    UnseenRoot(Gap),
}

fn counter_name<S: Serializer>(counter: &Counter, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(counter.name())
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incomplete::Dropped { counter, n } => match counter.remedy() {
                Some(remedy) => write!(f, "{}: {n}, {remedy}", counter.name()),
                None => write!(f, "{}: {n}", counter.name()),
            },
            Incomplete::NoExitStop => f.write_str(
                "the process ended without an exit stop (killed by SIGKILL?): its outstanding \
                 allocations could not be read",
            ),
            Incomplete::MemoryMapUnreadable { error } => write!(
                f,
                "the memory map could not be read ({error}): nothing was scanned for pointers"
            ),
            Incomplete::AllocatorNotLoaded { allocator } => write!(
                f,
                "the program never loaded {}, so its allocations were not traced (statically \
                 linked, or another allocator? see --allocator-object)",
                allocator.display()
            ),
            Incomplete::RustAllocationsNotTraced { executable, why } => write!(
                f,
                "the Rust allocations of {} were not traced: {why}",
                executable.display()
            ),
            Incomplete::DefinesMalloc {
                executable,
                probed,
                why,
            } => write!(
                f,
                "{} defines malloc itself, so its C allocations never reach {} and were not \
                 traced ({why}); name its allocator with --allocator-object",
                executable.display(),
                probed.display(),
            ),
            Incomplete::KnownAllocatorNotProbed {
                name,
                executable,
                error,
            } => write!(
                f,
                "the {name} functions of {} were not traced: they could not be probed ({error})",
                executable.display()
            ),
            Incomplete::NotInherited { error } => write!(
                f,
                "its parent's outstanding blocks could not be copied at the fork: {error}"
            ),
            Incomplete::NotRestarted { error } => write!(f, "restarting after its exec: {error}"),
            Incomplete::TraceUnreadable { error } => {
                write!(f, "its trace could not be read at its exit: {error}")
            }
            Incomplete::ChildUntraced {
                pid,
                executable,
                error,
            } => write!(
                f,
                "child process {pid} ({executable}) could not be traced: {error}"
            ),
            Incomplete::Child {
                pid,
                executable,
                reason,
            } => write!(f, "in child process {pid} ({executable}): {reason}"),
            Incomplete::UnseenRoot(gap) => gap.fmt(f),
        }
    }
}

impl From<Gap> for Incomplete {
    fn from(gap: Gap) -> Self {
        Incomplete::UnseenRoot(gap)
    }
}

/// The reasons a trace is incomplete; serialized (flattened into a report) as `incomplete`,
/// their sentences, and `incomplete_reasons`, the reasons themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons(pub Vec<Incomplete>);

impl Reasons {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sentences, joined by `; `.
    pub fn joined(&self) -> String {
        joined(&self.0)
    }
}

/// The sentences of `reasons`, joined by `; `.
pub fn joined(reasons: &[Incomplete]) -> String {
    reasons
        .iter()
        .map(Incomplete::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Serialize for Reasons {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let words: Vec<String> = self.0.iter().map(Incomplete::to_string).collect();
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("incomplete", &words)?;
        map.serialize_entry("incomplete_reasons", &self.0)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before_and_serialize_as_data() {
        let reasons = Reasons(vec![
            Incomplete::Dropped {
                counter: Counter::AllocMapFull,
                n: 20000,
            },
            Incomplete::Dropped {
                counter: Counter::FreeUnknown,
                n: 3,
            },
            Incomplete::UnseenRoot(Gap::ThreadRegisters { tid: 42 }),
            Incomplete::AllocatorNotLoaded {
                allocator: "/lib/libc.so.6".into(),
            },
        ]);
        assert_eq!(
            reasons.joined(),
            "alloc_map_full: 20000, raise --max-allocs; free_unknown: 3; the registers of \
             thread 42 could not be read at its exit; the program never loaded /lib/libc.so.6, \
             so its allocations were not traced (statically linked, or another allocator? see \
             --allocator-object)"
        );
        #[derive(Serialize)]
        struct Report {
            #[serde(flatten)]
            incomplete: Reasons,
        }
        let json = serde_json::to_value(Report {
            incomplete: reasons,
        })
        .unwrap();
        assert_eq!(
            json["incomplete"][0],
            "alloc_map_full: 20000, raise --max-allocs"
        );
        assert_eq!(
            json["incomplete_reasons"],
            serde_json::json!([
                {"kind": "dropped", "counter": "alloc_map_full", "n": 20000},
                {"kind": "dropped", "counter": "free_unknown", "n": 3},
                {"kind": "thread_registers", "tid": 42},
                {"kind": "allocator_not_loaded", "allocator": "/lib/libc.so.6"},
            ])
        );
    }
}
