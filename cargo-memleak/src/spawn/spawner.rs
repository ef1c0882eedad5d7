//! The spawner: a small process of our own (this binary again, as `__memleak-spawner`) that
//! forks the tests of a run for us. Forking cargo-memleak itself copies the page tables of a
//! large, multi-threaded process and makes every CPU that runs one of its threads flush its
//! TLB; measured on a run of a thousand tiny tests, that was the largest single cost of the
//! tracer (copy_page_range, TLB shootdown IPIs and the copy-on-write faults that follow). The
//! spawner's own address space stays a few megabytes, so its forks cost next to nothing.
//!
//! Nothing else changes: the child is prepared exactly as [`super::gate`] prepares it (the
//! argv, environment, working directory, ids and descriptors, sent over a unix socket with
//! the descriptors attached) and waits at the same gate; the worker that asked seizes it as
//! before, so the probes are attached before the child execs and the worker is its tracer from
//! the first instruction. The spawner is the child's parent, and reaps it once its tracer has
//! seen it exit (it ignores SIGCHLD, so the kernel does that for it).
//!
//! Invariants: the spawner dies with the thread that started it (`PR_SET_PDEATHSIG`), and exits
//! when its socket closes; between fork and exec its child runs only [`super::gate`]'s
//! async-signal-safe code on memory prepared before the fork.

use std::{
    ffi::CString,
    io::IoSlice,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::Mutex,
};

use nix::{
    libc,
    sys::socket::{
        AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
        sendmsg, socketpair,
    },
    unistd::{ForkResult, Pid, fork},
};

use super::gate::{Prepared, exec_child};
use crate::{
    error::{Error, Result},
    user::Credentials,
};

/// The hidden first argument that makes cargo-memleak a spawner.
pub const ARGUMENT: &str = "__memleak-spawner";

/// The spawner's end of the socket, in the spawner.
const SOCKET_FD: RawFd = 3;

/// The descriptors a child takes along: the gate's read end, the exec-errors write end, and
/// /dev/null and the output memfd (stdin, stdout and stderr).
pub const FDS: usize = 4;

/// A running spawner.
#[derive(Debug)]
pub struct Spawner {
    /// `None` once dropped.
    socket: Mutex<Option<OwnedFd>>,
    process: std::process::Child,
}

impl Spawner {
    /// Starts the spawner. Call it from a thread that outlives every spawn (the spawner dies
    /// with the thread that started it).
    pub fn start() -> Result<Self> {
        let error = |err: std::io::Error| Error::io("starting the spawner process")(err);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| error(errno.into()))?;
        let exe = std::env::current_exe().map_err(error)?;
        let mut command = std::process::Command::new(exe);
        command
            .arg(ARGUMENT)
            .stdin(std::process::Stdio::null())
            .env_clear();
        let theirs_fd = theirs.as_raw_fd();
        // SAFETY: dup2 and prctl are async-signal-safe; the closure touches no memory but the
        // copied descriptor number.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::dup2(theirs_fd, SOCKET_FD) < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command.spawn().map_err(error)?;
        drop(theirs);
        Ok(Self {
            socket: Mutex::new(Some(ours)),
            process,
        })
    }

    /// Forks a child that runs `prepared` with `fds` (see [`FDS`]); returns its pid once it
    /// exists (it then waits at the gate).
    pub(super) fn spawn(&self, prepared: &Prepared, fds: [BorrowedFd; FDS]) -> Result<Pid> {
        let error =
            |errno: nix::errno::Errno| Error::io("asking the spawner for a process")(errno.into());
        let message = encode(prepared);
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let socket = socket
            .as_ref()
            .ok_or_else(|| error(nix::errno::Errno::EBADF))?;
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&message)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .map_err(error)?;
        let mut reply = [0u8; 8];
        let received = nix::sys::socket::recv(socket.as_raw_fd(), &mut reply, MsgFlags::empty())
            .map_err(error)?;
        if received != 8 {
            return Err(Error::io("the spawner process")(std::io::Error::other(
                "it exited",
            )));
        }
        let (pid, errno) = (
            i32::from_ne_bytes(reply[..4].try_into().unwrap_or_default()),
            i32::from_ne_bytes(reply[4..].try_into().unwrap_or_default()),
        );
        if pid <= 0 {
            return Err(Error::io("the spawner's fork")(
                std::io::Error::from_raw_os_error(errno),
            ));
        }
        Ok(Pid::from_raw(pid))
    }
}

impl Drop for Spawner {
    /// Closing the socket ends the spawner.
    fn drop(&mut self) {
        let socket = self
            .socket
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(socket.take());
        let _ = self.process.wait();
    }
}

/// The spawner's life: one child per request, until the socket closes.
pub fn serve() -> std::process::ExitCode {
    // SAFETY: plain system calls; SIG_IGN installs no handler code. Ignoring SIGCHLD makes the
    // kernel reap the children (after their tracer has seen them exit).
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::fcntl(SOCKET_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        if libc::getppid() == 1 {
            return std::process::ExitCode::FAILURE;
        }
    }
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let mut space = nix::cmsg_space!([RawFd; FDS]);
        let (length, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
            let Ok(message) = recvmsg::<()>(
                SOCKET_FD,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                return std::process::ExitCode::FAILURE;
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for cmsg in message.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these descriptors for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (message.bytes, fds)
        };
        if length == 0 {
            return std::process::ExitCode::SUCCESS;
        }
        let reply = match (decode(&buffer[..length]), <[OwnedFd; FDS]>::try_from(fds)) {
            (Some(prepared), Ok(fds)) => fork_child(&prepared, &fds),
            _ => (0, libc::EINVAL),
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&reply.0.to_ne_bytes());
        bytes[4..].copy_from_slice(&reply.1.to_ne_bytes());
        if nix::sys::socket::send(SOCKET_FD, &bytes, MsgFlags::empty()).is_err() {
            return std::process::ExitCode::FAILURE;
        }
    }
}

/// Forks the child; returns its pid, or 0 and the errno.
fn fork_child(prepared: &Prepared, fds: &[OwnedFd; FDS]) -> (i32, i32) {
    let [gate, errors, null, output] = fds.each_ref().map(|fd| fd.as_raw_fd());
    let argv = pointers(&prepared.argv);
    let envp = pointers(&prepared.envp);
    // SAFETY: the child only makes async-signal-safe calls on memory prepared above, then
    // execs or exits (see `exec_child`).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            exec_child(
                prepared,
                Some((null, output)),
                &argv,
                &envp,
                [gate, -1],
                [-1, errors],
            )
        },
        Ok(ForkResult::Parent { child }) => (child.as_raw(), 0),
        Err(errno) => (0, errno as i32),
    }
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A request: the program, argv, envp, the working directory and the ids, each string
/// length-prefixed.
fn encode(prepared: &Prepared) -> Vec<u8> {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
        out.extend_from_slice(bytes);
    };
    string(&mut out, prepared.program.as_bytes());
    for list in [&prepared.argv, &prepared.envp] {
        out.extend_from_slice(&(list.len() as u32).to_ne_bytes());
        for item in list {
            string(&mut out, item.as_bytes());
        }
    }
    match &prepared.cwd {
        Some(cwd) => {
            out.push(1);
            string(&mut out, cwd.as_bytes());
        }
        None => out.push(0),
    }
    match &prepared.credentials {
        Some(credentials) => {
            out.push(1);
            let (uid, gid, groups) = credentials.parts();
            out.extend_from_slice(&uid.to_ne_bytes());
            out.extend_from_slice(&gid.to_ne_bytes());
            out.extend_from_slice(&(groups.len() as u32).to_ne_bytes());
            for group in groups {
                out.extend_from_slice(&group.to_ne_bytes());
            }
        }
        None => out.push(0),
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<Prepared> {
    let mut u32_ = |bytes: &mut &[u8]| -> Option<u32> {
        let (head, rest) = bytes.split_first_chunk::<4>()?;
        *bytes = rest;
        Some(u32::from_ne_bytes(*head))
    };
    let string = |bytes: &mut &[u8], u32_: &mut dyn FnMut(&mut &[u8]) -> Option<u32>| {
        let len = u32_(bytes)? as usize;
        let (head, rest) = bytes.split_at_checked(len)?;
        *bytes = rest;
        CString::new(head).ok()
    };
    let program = string(&mut bytes, &mut u32_)?;
    let mut lists = Vec::new();
    for _ in 0..2 {
        let count = u32_(&mut bytes)?;
        let mut list = Vec::new();
        for _ in 0..count {
            list.push(string(&mut bytes, &mut u32_)?);
        }
        lists.push(list);
    }
    let envp = lists.pop()?;
    let argv = lists.pop()?;
    let (&has_cwd, rest) = bytes.split_first()?;
    bytes = rest;
    let cwd = if has_cwd == 1 {
        Some(string(&mut bytes, &mut u32_)?)
    } else {
        None
    };
    let (&has_ids, rest) = bytes.split_first()?;
    bytes = rest;
    let credentials = if has_ids == 1 {
        let uid = u32_(&mut bytes)?;
        let gid = u32_(&mut bytes)?;
        let count = u32_(&mut bytes)?;
        let groups = (0..count)
            .map(|_| u32_(&mut bytes))
            .collect::<Option<Vec<u32>>>()?;
        Some(Credentials::from_parts(uid, gid, groups))
    } else {
        None
    };
    Some(Prepared {
        program,
        cwd,
        argv,
        envp,
        stdio: None,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_decodes_to_what_was_encoded() {
        let prepared = Prepared {
            program: c"/bin/true".into(),
            cwd: Some(c"/tmp".into()),
            argv: vec![c"true".into(), c"--exact".into(), c"a b".into()],
            envp: vec![c"A=1".into(), c"PATH=/bin".into()],
            stdio: None,
            credentials: Some(Credentials::from_parts(1000, 1000, vec![1000, 27])),
        };
        let decoded = decode(&encode(&prepared)).expect("decodes");
        assert_eq!(decoded.program, prepared.program);
        assert_eq!(decoded.cwd, prepared.cwd);
        assert_eq!(decoded.argv, prepared.argv);
        assert_eq!(decoded.envp, prepared.envp);
        assert_eq!(
            decoded.credentials.map(|c| c.parts().2.to_vec()),
            Some(vec![1000, 27])
        );
        assert!(
            decode(&encode(&prepared)[..10]).is_none(),
            "a cut request is refused"
        );
    }
}
