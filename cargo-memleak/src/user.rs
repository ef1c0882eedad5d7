//! Who the crate's code runs as: under `sudo` (or with `--user`), everything cargo-memleak
//! starts — cargo, rustc and the build scripts it runs, the test binaries listing and running
//! their tests, the program of `exec` and `run` — runs as the invoking user, with that user's
//! HOME, CARGO_HOME and RUSTUP_HOME. Only the tracer itself keeps root's privileges, and the
//! files it writes (baselines, reports, JUnit) are handed to that user.
//!
//! Invariants: chosen once, before any work ([`select`], from `Cli::validate`), and carried in
//! the options of the command (`run_as`), which its driver passes to everything that starts
//! the crate's code or writes a file for the user; `None` means "as we are" (not root, not
//! under sudo, or `--user root`). The switch happens in the child between `fork` and `execve`,
//! supplementary groups first, then the group, then the user, so nothing of the crate ever runs
//! with root's ids.

use std::ffi::{CString, OsString};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

/// The user the crate's code runs as, and where its toolchain lives.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from the group database (as a login would have them).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub cargo_home: PathBuf,
    pub rustup_home: PathBuf,
}

/// Chooses the user for this run: `--user USER` when given, else the one `sudo` names in
/// SUDO_UID / SUDO_GID when we are root; `None` to run everything as we are.
pub fn select(flag: Option<&str>) -> Result<Option<RunAs>> {
    RunAs::resolve(flag)
}

/// Applies `run_as` to a command that runs the crate's code (see [`RunAs::apply`]).
pub fn apply(command: &mut std::process::Command, run_as: Option<&RunAs>) {
    if let Some(run_as) = run_as {
        run_as.apply(command);
    }
}

/// Hands a file cargo-memleak created to `owner`.
pub fn give(path: &Path, owner: Option<&RunAs>) -> std::io::Result<()> {
    match owner {
        Some(run_as) => std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid)),
        None => Ok(()),
    }
}

/// The cargo to run: the user's own (CARGO_HOME/bin/cargo) when running as another user, else
/// the one that started us (`CARGO`), else `cargo` from PATH.
pub fn cargo(run_as: Option<&RunAs>) -> OsString {
    if let Some(run_as) = run_as {
        let own = run_as.cargo_home.join("bin/cargo");
        if own.exists() {
            return own.into_os_string();
        }
    }
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

impl RunAs {
    fn resolve(flag: Option<&str>) -> Result<Option<Self>> {
        let root = Uid::effective().is_root();
        let (user, gid) = match flag {
            Some(name) => {
                let user = lookup(name)?;
                if user.uid.is_root() {
                    return Ok(None);
                }
                if !root && user.uid != Uid::effective() {
                    return Err(Error::Selection(format!(
                        "--user {name}: switching users needs root; run under sudo"
                    )));
                }
                let gid = user.gid;
                (user, gid)
            }
            None => {
                let Some(uid) = sudo_id("SUDO_UID") else {
                    return Ok(None);
                };
                if !root || uid == 0 {
                    return Ok(None);
                }
                let user = User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        Error::Selection(format!(
                            "SUDO_UID={uid} names no user in the user database; pass --user \
                             USER, or --user root to run everything as root"
                        ))
                    })?;
                let gid = sudo_id("SUDO_GID").map_or(user.gid, Gid::from_raw);
                (user, gid)
            }
        };
        if !root {
            return Ok(None);
        }
        let uid = user.uid.as_raw();
        let groups = CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
            .map_or_else(
                || vec![gid.as_raw()],
                |groups| groups.iter().map(|g| g.as_raw()).collect(),
            );
        // The user's own values when the environment has them (sudo -E, or set on purpose),
        // root's when sudo left root's: only a directory the user owns is the user's.
        let owned = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.uid() == uid))
        };
        let home = owned("HOME").unwrap_or_else(|| user.dir.clone());
        Ok(Some(Self {
            cargo_home: owned("CARGO_HOME").unwrap_or_else(|| home.join(".cargo")),
            rustup_home: owned("RUSTUP_HOME").unwrap_or_else(|| home.join(".rustup")),
            home,
            name: user.name,
            uid,
            gid: gid.as_raw(),
            groups,
        }))
    }

    /// The variables a program started for this user gets on top of ours.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut path = OsString::from(self.cargo_home.join("bin"));
        if let Some(ours) = std::env::var_os("PATH") {
            path.push(":");
            path.push(ours);
        }
        vec![
            ("HOME".into(), self.home.clone().into()),
            ("USER".into(), self.name.clone().into()),
            ("LOGNAME".into(), self.name.clone().into()),
            ("CARGO_HOME".into(), self.cargo_home.clone().into()),
            ("RUSTUP_HOME".into(), self.rustup_home.clone().into()),
            ("PATH".into(), path),
        ]
    }

    /// Makes `command` run as this user: its environment, and its groups and ids switched in
    /// the child before it execs.
    pub fn apply(&self, command: &mut std::process::Command) {
        command.envs(self.env());
        let credentials = self.credentials();
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || credentials.switch());
        }
    }

    /// The ids to switch to, ready for a forked child.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

/// Groups, group and user for a child to switch to before it execs.
#[derive(Clone, Debug)]
pub struct Credentials {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Credentials {
    /// The user, group and supplementary groups.
    pub fn parts(&self) -> (u32, u32, &[u32]) {
        (self.uid, self.gid, &self.groups)
    }

    pub fn from_parts(uid: u32, gid: u32, groups: Vec<u32>) -> Self {
        Self { uid, gid, groups }
    }

    /// Switches this process to them: groups, then group, then user (after setuid nothing
    /// else could be changed). Async-signal-safe: for a child between fork and exec.
    pub fn switch(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls; `groups` outlives the setgroups call.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn sudo_id(var: &str) -> Option<u32> {
    std::env::var(var).ok()?.trim().parse().ok()
}

/// A user by name or number.
fn lookup(name: &str) -> Result<User> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found.ok().flatten().ok_or_else(|| {
        Error::Selection(format!(
            "--user {name}: no such user; give a name or uid from the user database"
        ))
    })
}
