//! `cargo install` with stable Rust alone, as a new user would: from a clean clone, in an
//! environment whose rustup knows only the stable toolchain the workspace pins (as its default)
//! and whose PATH has no bpf-linker. The build script then takes the shipped eBPF object, and the installed
//! binary must trace a real program. `cargo package` for the two registry crates must carry the
//! object.
//!
//! The environment lives under `target/stable-only` (its target directory too, so a second
//! run is quick); the toolchain and cargo's registry cache are the machine's, linked in.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{output, run, workspace_root};

/// A machine of its own for cargo and rustup: a `RUSTUP_HOME` and a `CARGO_HOME` under one
/// directory (cargo's registry cache linked in from this machine's, so nothing is downloaded
/// twice), rustup's proxies on a PATH of system directories, and nothing else of ours in the
/// environment. Shared with the fresh-machine check ([`crate::fresh`]).
pub struct Environment {
    pub cargo_home: PathBuf,
    pub rustup_home: PathBuf,
    path: String,
    vars: Vec<(&'static str, std::ffi::OsString)>,
}

impl Environment {
    /// `rustup_home` is kept as it is; `cargo_home` is made anew.
    pub fn new(cargo_home: PathBuf, rustup_home: PathBuf) -> Result<Self> {
        let rustup = which("rustup")?;
        let _ = std::fs::remove_dir_all(&cargo_home);
        let bin = cargo_home.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(rustup_home.join("toolchains"))?;
        let proxies = [
            "rustup",
            "cargo",
            "rustc",
            "rustdoc",
            "rustfmt",
            "cargo-fmt",
            "cargo-clippy",
            "clippy-driver",
        ];
        for proxy in proxies {
            std::os::unix::fs::symlink(&rustup, bin.join(proxy))?;
        }
        let machine_home = PathBuf::from(std::env::var_os("HOME").context("HOME is set")?);
        let registry = std::env::var_os("CARGO_HOME")
            .map_or_else(|| machine_home.join(".cargo"), PathBuf::from)
            .join("registry");
        std::os::unix::fs::symlink(registry, cargo_home.join("registry"))?;
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin.display()
        );
        Ok(Self {
            cargo_home,
            rustup_home,
            path,
            vars: Vec::new(),
        })
    }

    /// Sets `name` for every command of this environment.
    pub fn var(&mut self, name: &'static str, value: impl Into<std::ffi::OsString>) {
        self.vars.push((name, value.into()));
    }

    /// `program` run in this environment and nothing of ours.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("CARGO_HOME", &self.cargo_home)
            .env("RUSTUP_HOME", &self.rustup_home)
            .envs(self.vars.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null());
        command
    }

    /// The toolchains its rustup has, one name per line as `rustup toolchain list` prints them.
    pub fn toolchains(&self) -> Result<Vec<String>> {
        let listed = output(
            self.command("rustup").args(["toolchain", "list"]),
            "rustup toolchain list",
        )?;
        Ok(listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| !name.is_empty() && *name != "no")
            .map(str::to_owned)
            .collect())
    }
}

/// The stable-only environment: the workspace's pinned stable linked in as rustup's default
/// toolchain, and no bpf-linker.
fn stable_only(dir: &Path) -> Result<Environment> {
    let channel = crate::toolchain::WORKSPACE_CHANNEL;
    let sysroot = output(
        Command::new("rustc").args([format!("+{channel}").as_str(), "--print", "sysroot"]),
        "rustc --print sysroot (the pinned stable)",
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    let rustup_home = dir.join("rustup");
    let _ = std::fs::remove_dir_all(&rustup_home);
    let env = Environment::new(dir.join("cargo"), rustup_home)?;
    let name = sysroot.file_name().context("the sysroot has a name")?;
    std::os::unix::fs::symlink(&sysroot, env.rustup_home.join("toolchains").join(name))?;
    std::fs::write(
        env.rustup_home.join("settings.toml"),
        format!(
            "version = \"12\"\ndefault_toolchain = \"{}\"\nprofile = \"minimal\"\n",
            name.to_string_lossy()
        ),
    )?;
    Ok(env)
}

pub fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

/// Clones the workspace's HEAD, installs cargo-memleak from it with stable alone, and traces
/// the C fixture with the installed binary.
pub fn check() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/stable-only");
    std::fs::create_dir_all(&dir)?;
    let env = stable_only(&dir)?;

    let toolchains = env.toolchains()?;
    ensure!(
        toolchains.len() == 1 && !toolchains[0].contains("nightly"),
        "the stable-only environment has other toolchains: {toolchains:?}"
    );
    let linker = env
        .command("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()?;
    ensure!(
        !linker.status.success(),
        "bpf-linker is on the stable-only PATH"
    );

    let clone = dir.join("clone");
    let _ = std::fs::remove_dir_all(&clone);
    run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(&root)
            .arg(&clone),
        "git clone (a clean clone of HEAD)",
    )?;
    let install_root = dir.join("install");
    eprintln!("xtask: cargo install --locked --path cargo-memleak, with stable Rust alone");
    let installed = env
        .command("cargo")
        .args([
            "install",
            "--locked",
            "--quiet",
            "--path",
            "cargo-memleak",
            "--root",
        ])
        .arg(&install_root)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&clone)
        .output()
        .context("cargo install: could not start")?;
    let stderr = String::from_utf8_lossy(&installed.stderr);
    ensure!(
        installed.status.success(),
        "cargo install failed:\n{stderr}"
    );
    ensure!(
        !stderr.contains("warning"),
        "cargo install printed warnings:\n{stderr}"
    );
    let binary = install_root.join("bin/cargo-memleak");

    // The registry packages: cargo-memleak's carries the object.
    let packaged = env
        .command("cargo")
        .args(["package", "--locked", "--quiet", "--no-verify"])
        .args(["--package", "memleak-common", "--package", "cargo-memleak"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&clone)
        .output()?;
    ensure!(
        packaged.status.success(),
        "cargo package failed:\n{}",
        String::from_utf8_lossy(&packaged.stderr)
    );
    let crate_file = std::fs::read_dir(dir.join("target/package"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("cargo-memleak-") && name.ends_with(".crate"))
        })
        .context("cargo package wrote no cargo-memleak .crate")?;
    let listing = output(Command::new("tar").arg("tzvf").arg(&crate_file), "tar tzvf")?;
    let shipped_size = std::fs::metadata(root.join(crate::ebpf::SHIPPED))?.len();
    ensure!(
        listing
            .lines()
            .any(|line| line.ends_with("/ebpf/memleak-ebpf.bpf.o")
                && line.split_whitespace().nth(2) == Some(&shipped_size.to_string())),
        "{} lacks the eBPF object ({shipped_size} bytes):\n{listing}",
        crate_file.display()
    );

    let version = output(
        env.command(&binary).args(["memleak", "--version"]),
        "cargo memleak --version",
    )?;
    ensure!(
        version.contains("eBPF object: shipped"),
        "the stable-only build should carry the shipped object: {version}"
    );
    let fixture = dir.join("leaky");
    run(
        Command::new("cc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&fixture)
            .arg(root.join("fixtures/c/leaky.c")),
        "cc fixtures/c/leaky.c",
    )?;
    let traced = env
        .command(&binary)
        .args(["memleak", "exec", "--"])
        .arg(&fixture)
        .arg("malloc")
        .output()?;
    let report = String::from_utf8_lossy(&traced.stderr);
    ensure!(
        traced.status.success() && report.contains("definitely lost: 30000 bytes in 1 blocks"),
        "the installed binary did not find the fixture's 30000-byte leak ({}):\n{report}",
        traced.status
    );
    println!(
        "xtask install: installed with stable alone ({}), and it traced the fixture's leak",
        version.trim()
    );
    Ok(())
}
