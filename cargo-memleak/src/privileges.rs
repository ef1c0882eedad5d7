//! The capabilities each mode needs, checked before any work starts.
//!
//! Measured on Linux 6.18 as uid 65534 with file capabilities (`setcap ...+ep`), each set
//! minimal (every capability left out made the run fail):
//!
//! | mode | needs |
//! |---|---|
//! | `exec`, `run`, `test`, `attach` with multi-uprobe links | `CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_PTRACE` |
//! | the same on the perf-event fallback | `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE` |
//! | `kernel` (tracepoints) | `CAP_BPF`, `CAP_PERFMON`, `CAP_DAC_READ_SEARCH` |
//! | `kernel` when tracefs is not mounted | `CAP_SYS_ADMIN` too (to mount it) |
//!
//! Without `CAP_BPF` the maps or programs cannot be created; without `CAP_PERFMON` the programs
//! (which read user memory and stacks) are refused. `CAP_SYS_PTRACE` is needed even for our
//! own children: a process that gained capabilities from its file is not dumpable, and neither
//! is the child it forks until that child execs, so `PTRACE_SEIZE` is refused without it. A
//! perf-event uprobe's `perf_event_open` needs `CAP_SYS_ADMIN` (it implies BPF and PERFMON
//! there). tracefs is mode 0700, root's: `CAP_DAC_READ_SEARCH` reads the event ids and formats.
//!
//! Invariants: [`check`] runs before building or attaching anything, so a missing capability
//! costs no build; the error names what is missing and the one `setcap` line that grants the
//! whole set for this mode.

use caps::{CapSet, Capability};

use crate::error::{Error, Result};
use crate::kernel::Tracefs;
use crate::tracer::LinkMode;

/// What a command does that takes privileges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing traced (`test --list`, `test --no-run`).
    Nothing,
    /// Uprobes on processes held with ptrace (`test`, `run`, `exec`, `attach`).
    Uprobes,
    /// The kernel's tracepoints (`kernel`).
    Tracepoints,
}

/// The capabilities a command that `needs` that takes on this kernel.
pub fn required(needs: Needs) -> Result<Vec<Capability>> {
    use Capability::*;
    Ok(match needs {
        Needs::Nothing => Vec::new(),
        Needs::Tracepoints => {
            let mut set = vec![CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH];
            if !Tracefs::is_mounted() {
                set.push(CAP_SYS_ADMIN);
            }
            set
        }
        Needs::Uprobes => match LinkMode::chosen()? {
            LinkMode::Multi => vec![CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE],
            LinkMode::PerfEvent => vec![CAP_SYS_ADMIN, CAP_SYS_PTRACE],
        },
    })
}

/// Fails with [`Error::Privileges`] unless this process has every capability a command that
/// `needs` that takes.
pub fn check(needs: Needs) -> Result<()> {
    let required = required(needs)?;
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    let missing: Vec<_> = required
        .iter()
        .filter(|cap| !effective.contains(cap))
        .map(|cap| cap.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "cargo-memleak".into());
    Err(Error::Privileges {
        missing: missing.join(", "),
        setcap: setcap_line(&required, &exe),
    })
}

/// `setcap cap_a,cap_b+ep EXE`: what grants `required` to the binary.
fn setcap_line(required: &[Capability], exe: &str) -> String {
    let names: Vec<_> = required
        .iter()
        .map(|cap| cap.to_string().to_lowercase())
        .collect();
    format!("setcap {}+ep {exe}", names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setcap_line_lists_the_set_in_order() {
        assert_eq!(
            setcap_line(
                &[
                    Capability::CAP_BPF,
                    Capability::CAP_PERFMON,
                    Capability::CAP_SYS_PTRACE
                ],
                "/usr/local/bin/cargo-memleak"
            ),
            "setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep /usr/local/bin/cargo-memleak"
        );
    }
}
