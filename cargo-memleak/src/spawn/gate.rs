//! The fork/exec gate: everything the child needs is prepared before `fork` (argv, envp, the
//! working directory, stdio, the user's ids), the child switches to the user and waits on a
//! pipe until the parent has attached its probes, then execs; an exec that fails reports its
//! errno through a close-on-exec pipe. See the module above for the invariants.

use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    libc,
    sys::{
        ptrace::{self, Options},
        signal::{self, Signal},
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, fork, pipe2},
};

use crate::{
    error::{Error, Result},
    user::{Credentials, RunAs},
};

use super::{Command, Follow, Groups, Running, WAIT_ALL, resolve_program};

/// A forked child waiting at the gate; nothing of the program has run yet.
pub struct Gated {
    pid: Pid,
    program: PathBuf,
    gate: OwnedFd,
    exec_errors: OwnedFd,
    output: Option<OwnedFd>,
    isolated: bool,
    timeout: Option<Duration>,
    groups: Option<Arc<Groups>>,
}

/// Everything the child needs after `fork`, prepared before it.
pub(super) struct Prepared {
    pub(super) program: CString,
    pub(super) cwd: Option<CString>,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    /// For isolated commands: /dev/null (stdin) and the memfd that takes stdout and stderr.
    pub(super) stdio: Option<(OwnedFd, OwnedFd)>,
    /// Under sudo: the invoking user's ids, switched to before the program runs.
    pub(super) credentials: Option<Credentials>,
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Selection(format!("{what} contains a NUL byte")))
}

impl Prepared {
    fn new(program: &Path, command: &Command) -> Result<Self> {
        let mut argv = vec![c_string(command.program.as_bytes(), "the program name")?];
        for arg in &command.args {
            argv.push(c_string(arg.as_bytes(), "an argument")?);
        }
        let run_as = command.run_as.as_ref();
        let user_env = run_as.map(RunAs::env).unwrap_or_default();
        let overridden = |name: &OsString| {
            command
                .env
                .iter()
                .chain(&user_env)
                .any(|(set, _)| set == name)
        };
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(name, _)| !overridden(name))
            .collect();
        vars.extend(
            user_env
                .iter()
                .filter(|(name, _)| !command.env.iter().any(|(set, _)| set == name))
                .cloned(),
        );
        vars.extend(command.env.iter().cloned());
        let envp = vars
            .iter()
            .map(|(name, value)| {
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                c_string(&entry, "an environment variable")
            })
            .collect::<Result<_>>()?;
        let cwd = match &command.cwd {
            Some(dir) => Some(c_string(
                dir.as_os_str().as_bytes(),
                "the working directory",
            )?),
            None => None,
        };
        let stdio = if command.isolated {
            let null = std::fs::File::open("/dev/null")
                .map_err(Error::io("opening /dev/null for the test's stdin"))?;
            // SAFETY: a NUL-terminated name and valid flags; the fd is owned from here on.
            let fd = unsafe { libc::memfd_create(c"memleak-output".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(Error::io("creating a memfd for the test's output")(
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: `fd` was just created and nothing else owns it.
            let output = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            Some((OwnedFd::from(null), output))
        } else {
            None
        };
        Ok(Self {
            program: c_string(program.as_os_str().as_bytes(), "the program path")?,
            cwd,
            argv,
            envp,
            stdio,
            credentials: run_as.map(RunAs::credentials),
        })
    }
}

/// Forks the child and seizes it; it waits at the gate until [`Gated::release`].
pub fn spawn(command: &Command) -> Result<Gated> {
    let program = resolve_program(&command.program)?;
    let mut prepared = Prepared::new(&program, command)?;
    let argv: Vec<*const libc::c_char> = prepared
        .argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = prepared
        .envp
        .iter()
        .map(|var| var.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let spawn_error = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    let (gate_read, gate_write) = pipe2(OFlag::O_CLOEXEC).map_err(spawn_error)?;
    let (errors_read, errors_write) = pipe2(OFlag::O_CLOEXEC).map_err(spawn_error)?;

    let child = match (&command.spawner, &prepared.stdio) {
        (Some(spawner), Some((null, output))) => spawner.spawn(
            &prepared,
            [
                gate_read.as_fd(),
                errors_write.as_fd(),
                null.as_fd(),
                output.as_fd(),
            ],
        )?,
        _ => {
            let stdio = prepared
                .stdio
                .as_ref()
                .map(|(null, output)| (null.as_raw_fd(), output.as_raw_fd()));
            // SAFETY: the child only makes async-signal-safe calls on memory prepared above,
            // then execs or exits (see `exec_child`).
            match unsafe { fork() }.map_err(spawn_error)? {
                ForkResult::Child => unsafe {
                    exec_child(
                        &prepared,
                        stdio,
                        &argv,
                        &envp,
                        [gate_read.as_raw_fd(), gate_write.as_raw_fd()],
                        [errors_read.as_raw_fd(), errors_write.as_raw_fd()],
                    )
                },
                ForkResult::Parent { child } => child,
            }
        }
    };
    drop(gate_read);
    drop(errors_write);
    let output = prepared.stdio.take().map(|(_, output)| output);
    let mut options =
        Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_EXITKILL | Options::PTRACE_O_TRACECLONE;
    if command.follow != Follow::Nothing {
        options |= Options::PTRACE_O_TRACEFORK
            | Options::PTRACE_O_TRACEVFORK
            | Options::PTRACE_O_TRACEEXEC;
    }
    if let Err(source) = ptrace::seize(child, options) {
        let _ = signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, Some(WAIT_ALL));
        return Err(Error::Ptrace {
            operation: "PTRACE_SEIZE",
            pid: child.as_raw(),
            source,
        });
    }
    Ok(Gated {
        pid: child,
        program,
        gate: gate_write,
        exec_errors: errors_read,
        output,
        isolated: command.isolated,
        timeout: command.timeout,
        groups: command.groups.clone().filter(|_| command.isolated),
    })
}

/// The forked child: wait at the gate, then exec. Never returns.
///
/// # Safety
/// Must only be called in the child right after `fork`.
pub(super) unsafe fn exec_child(
    prepared: &Prepared,
    stdio: Option<(RawFd, RawFd)>,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    [gate_read, gate_write]: [RawFd; 2],
    [errors_read, errors_write]: [RawFd; 2],
) -> ! {
    // SAFETY: plain system calls on valid fds and NUL-terminated strings and arrays.
    unsafe {
        libc::close(gate_write);
        libc::close(errors_read);
        // Start as `cargo test` starts a test: what we (or the spawner) ignore is not the
        // program's to ignore (interrupts while we wait, SIGPIPE as every Rust program does,
        // SIGCHLD in the spawner, which would make the program's children reap themselves),
        // and no signal is blocked.
        for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGPIPE, libc::SIGCHLD] {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        if let Some((null, output)) = stdio {
            // A group of its own, so a timeout kills whatever it started too.
            libc::setpgid(0, 0);
            libc::dup2(null, 0);
            libc::dup2(output, 1);
            libc::dup2(output, 2);
        }
        // A fixed address-space layout (as under gdb and valgrind): the same program gives the
        // same pointer scan, so a report does not change from run to run by chance.
        let persona = libc::personality(0xffff_ffff);
        if persona != -1 {
            libc::personality((persona | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong);
        }
        let fail = |errno: i32| -> ! {
            libc::write(errors_write, (&raw const errno).cast(), 4);
            libc::_exit(127)
        };
        if let Some(credentials) = &prepared.credentials
            && credentials.switch().is_err()
        {
            fail(*libc::__errno_location());
        }
        if let Some(cwd) = &prepared.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(*libc::__errno_location());
        }
        let mut byte = 0u8;
        loop {
            match libc::read(gate_read, (&raw mut byte).cast(), 1) {
                1 => break,
                // The parent went away without opening the gate.
                0 => libc::_exit(127),
                _ if *libc::__errno_location() == libc::EINTR => continue,
                _ => libc::_exit(127),
            }
        }
        libc::execve(prepared.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(*libc::__errno_location())
    }
}

impl Gated {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// The program it is about to exec, as found in PATH.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Opens the gate: the child execs the program. Fails if the exec failed.
    pub fn release(self) -> Result<Running> {
        let Gated {
            pid,
            program,
            gate,
            exec_errors,
            output,
            isolated,
            timeout,
            groups,
        } = self;
        // The child called setpgid before it waited at the gate: its group exists.
        if let Some(groups) = &groups {
            groups.add(pid);
        }
        let mut running = Running::new(pid, output, isolated, groups.map(|groups| (groups, pid)));
        nix::unistd::write(&gate, &[1]).map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        drop(gate);
        // The pipe is close-on-exec: EOF means the exec succeeded, 4 bytes are its errno.
        let mut errno = [0u8; 4];
        let read = loop {
            match nix::unistd::read(&exec_errors, &mut errno) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        if let Ok(4) = read {
            let errno = Errno::from_raw(i32::from_ne_bytes(errno));
            running.finish()?;
            return Err(match errno {
                Errno::ENOENT => Error::ProgramNotFound {
                    program: program.display().to_string(),
                },
                _ => Error::NotExecutable {
                    program,
                    reason: errno.desc().to_string(),
                },
            });
        }
        if let Some(timeout) = timeout {
            // Isolated children lead their own process group: kill it all.
            let target = if isolated {
                Pid::from_raw(-pid.as_raw())
            } else {
                pid
            };
            running.start_watchdog(target, timeout);
        }
        Ok(running)
    }

    /// Kills the child before it ran anything (probes could not be attached).
    pub fn abort(self) {
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, Some(WAIT_ALL));
    }
}
