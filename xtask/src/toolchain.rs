//! The toolchains the workspace builds with, and how xtask gets onto them on any machine.
//!
//! Nothing of the workspace is pinned where rustup looks before xtask runs: there is no
//! `rust-toolchain.toml` at the root. With one, rustup's `cargo` proxy refuses to start at all
//! when the pinned toolchain is not installed and auto-install is off (`RUSTUP_AUTO_INSTALL=0`,
//! as on CI's machines), so `cargo xtask` would fail before any code of ours ran. Instead xtask
//! builds with whatever toolchain the machine has ([`OLDEST_STABLE`] or newer), installs the
//! pins itself ([`enter`]) and runs again under [`WORKSPACE`]: `RUSTUP_TOOLCHAIN` then pins
//! every cargo, rustc and test below it, whatever the user's default.
//!
//! Invariants: after [`enter`] returns, `RUSTUP_TOOLCHAIN` is [`WORKSPACE`]'s channel and
//! `CARGO` is unset, so no command xtask starts can reach the cargo that built xtask.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

/// A toolchain as `rustup toolchain install` takes it.
pub struct Pin {
    pub channel: String,
    /// Beyond the minimal profile.
    pub components: &'static [&'static str],
}

/// The toolchain the workspace builds and tests with: aya 0.16 and aya-ebpf 0.3 need rustc
/// 1.98 or newer.
pub const WORKSPACE_CHANNEL: &str = "1.99.1";

/// The oldest stable toolchain that builds xtask (clap 4.6 and edition 2024 need 1.85): what a
/// machine needs before the README's commands. `cargo xtask fresh-check` runs them with it.
pub const OLDEST_STABLE: &str = "1.85.0";

pub fn workspace() -> Pin {
    Pin {
        channel: WORKSPACE_CHANNEL.to_owned(),
        components: &["rustfmt", "clippy"],
    }
}

/// The nightly the eBPF programs build with, as memleak-ebpf/rust-toolchain.toml pins it (that
/// file applies inside memleak-ebpf only, where rustup finds it).
pub fn ebpf(root: &Path) -> Result<Pin> {
    let file = root.join("memleak-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let channel = parsed
        .get("toolchain")
        .and_then(|toolchain| toolchain.get("channel"))
        .and_then(toml::Value::as_str)
        .with_context(|| format!("{} pins no channel", file.display()))?;
    Ok(Pin {
        channel: channel.to_owned(),
        components: &["rust-src"],
    })
}

/// Installs `pin` unless it is there with its components already. The check is local, so
/// xtask runs offline once the toolchains are installed.
pub fn install(pin: &Pin) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain"])
        .arg(&pin.channel)
        .output()
        .with_context(|| "rustup component list: could not start rustup (is it on PATH?)")?;
    let listed = String::from_utf8_lossy(&installed.stdout);
    // Listed as `NAME-TRIPLE`, or `NAME` when it is the same for every target (rust-src).
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let has = |component: &str| {
        listed
            .lines()
            .any(|line| line == component || line == format!("{component}-{host}"))
    };
    if installed.status.success() && ["rustc", "cargo"].into_iter().all(has) {
        let missing: Vec<&str> = pin
            .components
            .iter()
            .copied()
            .filter(|component| !has(component))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
    }
    eprintln!("xtask: installing the {} toolchain", pin.channel);
    let mut command = Command::new("rustup");
    command.args(["toolchain", "install", &pin.channel, "--profile", "minimal"]);
    for component in pin.components {
        command.args(["--component", component]);
    }
    let status = command
        .status()
        .with_context(|| format!("rustup toolchain install {}", pin.channel))?;
    ensure!(
        status.success(),
        "rustup toolchain install {} failed ({status})",
        pin.channel
    );
    Ok(())
}

/// Makes this process run under the workspace's toolchain: when it does not already, installs
/// it and starts xtask again with `RUSTUP_TOOLCHAIN` set (and `CARGO`, the cargo that started
/// this xtask, dropped). Returns only in the process that runs under it.
pub fn enter() -> Result<()> {
    if std::env::var_os("RUSTUP_TOOLCHAIN").is_some_and(|active| active == WORKSPACE_CHANNEL) {
        return Ok(());
    }
    install(&workspace())?;
    let xtask = std::env::current_exe().context("the path of xtask's own binary")?;
    let err = Command::new(&xtask)
        .args(std::env::args_os().skip(1))
        .env("RUSTUP_TOOLCHAIN", WORKSPACE_CHANNEL)
        .env_remove("CARGO")
        .exec();
    Err(err).with_context(|| {
        format!(
            "running {} again under the {WORKSPACE_CHANNEL} toolchain",
            xtask.display()
        )
    })
}
