//! The README's two commands on a machine that has never seen the project: rustup, only an
//! older stable ([`toolchain::OLDEST_STABLE`]) as its default, `RUSTUP_AUTO_INSTALL=0`, nothing
//! of the project installed. From a clean clone of HEAD, `cargo xtask test` must get past its
//! bootstrap (the rest of it is what CI runs anyway) and `cargo xtask demo` must run to its
//! end; each starts with the pinned toolchains absent, so each proves it installs them itself.
//!
//! Everything lives under `target/fresh-machine/` and is kept between runs, so that a second
//! run costs seconds: `dist/` is a local copy of the parts of static.rust-lang.org that these
//! toolchains need, which the environment's rustup installs from (`RUSTUP_DIST_SERVER`, with
//! nothing else of rustup changed); the clone is reset to HEAD, its build directories kept.
//! bpf-linker is this machine's (building it is the same on any machine, and CI's fresh
//! machine builds it in the real bootstrap just before); cargo's registry cache is linked in.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    install::{Environment, which},
    run,
    toolchain::{self, Pin},
    workspace_root,
};

/// Set for `cargo xtask test`: it stops after its bootstrap.
pub const STOP_AFTER_BOOTSTRAP: &str = "CARGO_XTASK_TEST_STOP_AFTER_BOOTSTRAP";

const UPSTREAM: &str = "https://static.rust-lang.org";

pub fn check() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/fresh-machine");
    let dist = dir.join("dist");
    let older = Pin {
        channel: toolchain::OLDEST_STABLE.to_owned(),
        components: &[],
    };
    let pins = [toolchain::workspace(), toolchain::ebpf(&root)?];
    let start = Instant::now();
    for pin in std::iter::once(&older).chain(&pins) {
        mirror(&dist, pin)?;
    }
    let mut env = Environment::new(dir.join("cargo"), dir.join("rustup"))?;
    env.var("RUSTUP_AUTO_INSTALL", "0");
    env.var("RUSTUP_DIST_SERVER", format!("file://{}", dist.display()));
    std::os::unix::fs::symlink(which("bpf-linker")?, env.cargo_home.join("bin/bpf-linker"))?;
    if !env
        .toolchains()?
        .iter()
        .any(|name| name.starts_with(&older.channel))
    {
        rustup(
            &env,
            &[
                "toolchain",
                "install",
                &older.channel,
                "--profile",
                "minimal",
            ],
        )?;
    }
    rustup(&env, &["default", &older.channel])?;
    let clone = clean_clone(&root, &dir.join("clone"))?;
    eprintln!(
        "xtask fresh-check: the machine is ready ({:.1} s)",
        start.elapsed().as_secs_f64()
    );

    // The task, the variables it runs with, and the line that says it got as far as it must.
    type Task<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let commands: [Task; 2] = [
        (
            "test",
            &[(STOP_AFTER_BOOTSTRAP, "1")],
            "xtask test: bootstrapped",
        ),
        (
            "demo",
            &[],
            "xtask demo: the three leaking tests failed the leak gate",
        ),
    ];
    for (task, vars, done) in commands {
        for pin in &pins {
            if env
                .toolchains()?
                .iter()
                .any(|name| name.starts_with(&pin.channel))
            {
                rustup(&env, &["toolchain", "uninstall", &pin.channel])?;
            }
        }
        let toolchains = env.toolchains()?;
        ensure!(
            toolchains.len() == 1 && toolchains[0].starts_with(&older.channel),
            "the fresh machine should hold only {}, it holds {toolchains:?}",
            older.channel
        );
        let start = Instant::now();
        eprintln!(
            "xtask fresh-check: cargo xtask {task}, with only {} installed",
            older.channel
        );
        let out = env
            .command("cargo")
            .args(["xtask", task])
            .envs(vars.iter().copied())
            .current_dir(&clone)
            .output()
            .with_context(|| format!("cargo xtask {task}: could not start"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(done),
            "`cargo xtask {task}` on the fresh machine failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "xtask fresh-check: cargo xtask {task} passed ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
    }
    println!(
        "xtask fresh-check: with only rustup and {} (auto-install off), `cargo xtask test` \
         installed the toolchains and bootstrapped, and `cargo xtask demo` ran",
        older.channel
    );
    Ok(())
}

fn rustup(env: &Environment, args: &[&str]) -> Result<()> {
    let out = env.command("rustup").args(args).output()?;
    ensure!(
        out.status.success(),
        "rustup {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A clone of the workspace's HEAD at `clone`: cloned the first time, then fetched, reset and
/// cleaned of everything but its build directories.
fn clean_clone(root: &Path, clone: &Path) -> Result<PathBuf> {
    let git = |args: &[&str]| {
        let mut command = Command::new("git");
        command.arg("-C").arg(clone).args(args);
        command
    };
    if clone.join(".git").exists() {
        run(
            git(&["fetch", "--quiet"]).arg(root).arg("HEAD"),
            "git fetch",
        )?;
        run(
            &mut git(&["reset", "--quiet", "--hard", "FETCH_HEAD"]),
            "git reset",
        )?;
        run(&mut git(&["clean", "-ffdxq", "-e", "target"]), "git clean")?;
    } else {
        run(
            Command::new("git")
                .args(["clone", "--quiet", "--no-hardlinks"])
                .arg(root)
                .arg(clone),
            "git clone (a clean clone of HEAD)",
        )?;
    }
    Ok(clone.to_owned())
}

/// Copies into `dist` (as laid out on static.rust-lang.org) the channel manifest of `pin` and
/// the packages `rustup toolchain install --profile minimal` takes for it and its components.
/// Files already there are kept; rustup checks every package's hash when it installs.
fn mirror(dist: &Path, pin: &Pin) -> Result<()> {
    let manifest = match pin.channel.strip_prefix("nightly-") {
        Some(date) => format!("dist/{date}/channel-rust-nightly.toml"),
        None => format!("dist/channel-rust-{}.toml", pin.channel),
    };
    download(dist, &format!("{manifest}.sha256"))?;
    download(dist, &manifest)?;
    let text = std::fs::read_to_string(dist.join(&manifest))?;
    let parsed: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {manifest}"))?;
    let minimal = parsed
        .get("profiles")
        .and_then(|profiles| profiles.get("minimal"))
        .and_then(toml::Value::as_array)
        .with_context(|| format!("{manifest} has no minimal profile"))?;
    let names = minimal
        .iter()
        .filter_map(toml::Value::as_str)
        .chain(pin.components.iter().copied());
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    for name in names {
        // `clippy` is packaged as `clippy-preview`, and so on.
        let package = parsed
            .get("renames")
            .and_then(|renames| renames.get(name))
            .and_then(|rename| rename.get("to"))
            .and_then(toml::Value::as_str)
            .unwrap_or(name);
        let targets = parsed
            .get("pkg")
            .and_then(|packages| packages.get(package))
            .and_then(|package| package.get("target"))
            .with_context(|| format!("{manifest} has no package {package}"))?;
        let Some(target) = targets.get(&host).or_else(|| targets.get("*")) else {
            continue;
        };
        if target.get("available").and_then(toml::Value::as_bool) != Some(true) {
            continue; // rust-mingw, on Linux
        }
        let url = target
            .get("xz_url")
            .or_else(|| target.get("url"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{manifest}: {package} has no url"))?;
        let path = url
            .strip_prefix(UPSTREAM)
            .and_then(|path| path.strip_prefix('/'))
            .with_context(|| format!("{manifest}: {url} is not on {UPSTREAM}"))?;
        download(dist, path)?;
    }
    Ok(())
}

/// Downloads `UPSTREAM/path` to `dist/path`, unless it is there.
fn download(dist: &Path, path: &str) -> Result<()> {
    let file = dist.join(path);
    if file.exists() {
        return Ok(());
    }
    let partial = file.with_extension("partial");
    std::fs::create_dir_all(file.parent().context("a file has a directory")?)?;
    run(
        Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--location",
                "--retry",
                "3",
            ])
            .arg("--output")
            .arg(&partial)
            .arg(format!("{UPSTREAM}/{path}")),
        &format!("downloading {UPSTREAM}/{path}"),
    )?;
    std::fs::rename(&partial, &file)?;
    Ok(())
}
