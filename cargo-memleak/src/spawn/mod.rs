//! Starts a program as a traced child: forked, held at a pipe gate before `execve` until the
//! probes are attached ([`gate`]), then followed with ptrace until it exits ([`running`]). This
//! file holds what both sides share: what to start ([`Command`], which children to follow,
//! the process groups of running tests) and how it ended ([`ExitStatus`]).
//!
//! Invariants:
//! - The child does nothing between `fork` and `execve` but async-signal-safe system calls on
//!   data prepared before the fork; in particular it never allocates, so nothing is recorded
//!   for it before the program starts.
//! - The program runs without address-space randomization (as under gdb and valgrind), so
//!   the pointer scan at exit, and with it the report, is the same from run to run.
//! - The child is seized with `PTRACE_O_EXITKILL` (it dies with us), `PTRACE_O_TRACECLONE`
//!   (all its threads are followed) and `PTRACE_O_TRACEEXIT`: when the process exits, one of
//!   its threads stops at `PTRACE_EVENT_EXIT` with the address space still intact. That stop is
//!   reported once, as [`Event::ExitStop`]; everything else is resumed transparently, signals
//!   re-injected. The exit has killed the other threads, and each of them stops at its own
//!   `PTRACE_EVENT_EXIT` on the way out: [`Running::live_threads`] holds them there too, so
//!   the scan sees every thread's registers, as LeakSanitizer's stop-the-world does.
//! - A process that is already running (`attach`) can be seized too ([`Running::seize`]):
//!   each of its threads with `PTRACE_O_TRACEEXIT | PTRACE_O_TRACECLONE` (threads it creates
//!   later are seized by the kernel), without `PTRACE_O_EXITKILL`: if we die it runs on.
//!   [`Running::let_go`] detaches every thread, and it runs on unharmed.
//! - Every wait is `__WNOTHREAD`: a thread waits only for the children it forked and the
//!   tracees it seized. ptrace ties a tracee to the thread that seized it anyway, so one child
//!   lives on one thread from `spawn` to reap, and several threads can each run their own
//!   child at once (`cargo memleak test -j N`).

mod gate;
mod running;
pub mod spawner;

pub use gate::{Gated, spawn};
pub use running::{Event, LiveThread, Running, ThreadState};

use std::{
    collections::BTreeSet,
    ffi::OsString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    sys::{
        signal::{self, Signal},
        wait::WaitPidFlag,
    },
    unistd::Pid,
};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    user::RunAs,
};

/// Waits for any of this thread's children or tracees (see the module's invariants).
const WAIT_ALL: WaitPidFlag = WaitPidFlag::__WALL.union(WaitPidFlag::__WNOTHREAD);

/// What to start.
#[derive(Clone, Debug)]
pub struct Command {
    /// The program, as the user named it.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Working directory; the current one when `None`.
    pub cwd: Option<PathBuf>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Run it as a test: in a process group of its own (killed whole on timeout), stdin from
    /// /dev/null, stdout and stderr captured together (see [`Running::take_output`]).
    /// Otherwise it shares our terminal, and Ctrl-C reaches it rather than us.
    pub isolated: bool,
    /// Kill its process group after this long (isolated commands only).
    pub timeout: Option<Duration>,
    /// Which of the processes it starts to follow (fork, vfork, and what they exec): they are
    /// reported as [`Event::Forked`] and [`Event::Exec`], and stop at their own exit like it
    /// does.
    pub follow: Follow,
    /// Where an isolated command's process group is registered while it runs, so that an
    /// interrupted test run can kill every running test at once ([`Groups::kill_all`]).
    pub groups: Option<Arc<Groups>>,
    /// Under sudo (or `--user`): the user it runs as, with that user's environment; its ids
    /// are switched to in the child before it execs.
    pub run_as: Option<RunAs>,
    /// Forks it from the spawner process (isolated commands only) rather than from us: much
    /// cheaper for a test run, whose process is large (see [`spawner`]).
    pub spawner: Option<Arc<spawner::Spawner>>,
}

/// The process groups of the isolated commands running now (each test leads its own).
#[derive(Debug, Default)]
pub struct Groups {
    state: std::sync::Mutex<GroupsState>,
}

#[derive(Debug, Default)]
struct GroupsState {
    live: BTreeSet<i32>,
    /// `kill_all` was called: a group registered from now on is killed at once.
    killed: bool,
}

impl Groups {
    fn state(&self) -> std::sync::MutexGuard<'_, GroupsState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Kills every registered group with SIGKILL, and every group registered after.
    pub fn kill_all(&self) {
        let mut state = self.state();
        state.killed = true;
        for &group in &state.live {
            let _ = signal::kill(Pid::from_raw(-group), Signal::SIGKILL);
        }
    }

    fn add(&self, group: Pid) {
        let mut state = self.state();
        if state.killed {
            let _ = signal::kill(Pid::from_raw(-group.as_raw()), Signal::SIGKILL);
        }
        state.live.insert(group.as_raw());
    }

    fn remove(&self, group: Pid) {
        self.state().live.remove(&group.as_raw());
    }
}

/// Which of the processes a traced program starts are followed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Follow {
    /// None: only the program and its threads are traced.
    #[default]
    Nothing,
    /// Children that run one of these executables (canonical paths), and children that do not
    /// exec (they run the program they were forked from).
    Executables(std::collections::BTreeSet<PathBuf>),
    /// Every child.
    All,
}

/// Which children to follow, before the workspace's executables are known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FollowChildren {
    /// Every child.
    All,
    /// Children that run one of the workspace's built targets, and children that do not exec.
    #[default]
    Workspace,
    /// None: only the program itself.
    None,
}

impl FollowChildren {
    /// The policy, given the workspace's built executables (asked for only when needed).
    pub fn follow(self, workspace: impl FnOnce() -> std::collections::BTreeSet<PathBuf>) -> Follow {
        match self {
            FollowChildren::All => Follow::All,
            FollowChildren::None => Follow::Nothing,
            FollowChildren::Workspace => Follow::Executables(workspace()),
        }
    }
}

impl Follow {
    /// Whether a child that exec'd `executable` is followed.
    pub fn follows(&self, executable: &Path) -> bool {
        match self {
            Follow::Nothing => false,
            Follow::All => true,
            Follow::Executables(set) => {
                set.contains(executable)
                    || std::fs::canonicalize(executable).is_ok_and(|path| set.contains(&path))
            }
        }
    }
}

impl Command {
    /// A command with the inherited environment and working directory, sharing our terminal.
    pub fn new(program: impl Into<OsString>, args: Vec<OsString>) -> Self {
        Self {
            program: program.into(),
            args,
            cwd: None,
            env: Vec::new(),
            isolated: false,
            timeout: None,
            follow: Follow::Nothing,
            groups: None,
            run_as: None,
            spawner: None,
        }
    }
}

/// How the traced program ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExitStatus {
    Exited { code: i32 },
    Signaled { signal: String, core_dumped: bool },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited { code: 0 })
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited { code } => write!(f, "exit code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Resolves `program` like the shell does: a name without `/` is looked up in PATH.
pub fn resolve_program(program: &std::ffi::OsStr) -> Result<PathBuf> {
    let not_found = || Error::ProgramNotFound {
        program: program.to_string_lossy().into_owned(),
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        if !path.exists() {
            return Err(not_found());
        }
        return Ok(path);
    }
    which::which(program).map_err(|_| not_found())
}
