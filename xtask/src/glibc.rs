//! A second glibc: the allocator probes, `free`'s prologue decoding, arena and thread-stack
//! detection and the pointer scan all depend on glibc's build. This step runs the fixtures
//! under `cargo memleak exec` on this machine's glibc and inside a Debian 13 root (glibc
//! 2.41, made with debootstrap once and kept in `target/glibc/`), and requires the same
//! verdict from both: the same lost figures, the same stacks of the fixture's own code (bytes,
//! blocks, function), glibc's own blocks classified alike, nothing dropped, nothing incomplete.
//!
//! The root gets /proc, /sys and /dev inside a mount namespace of its own (`unshare`), so no
//! mount outlives the step.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{cargo, ensure_debian_packages, output, run, workspace_root};

const SUITE: &str = "trixie";
const GLIBC: &str = "2.41";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A fixture run: a name for messages, and the executable (in /opt/memleak) with its mode.
struct Program {
    name: String,
    args: Vec<String>,
}

impl Program {
    fn racy(&self) -> bool {
        self.args.iter().any(|arg| RACY.contains(&arg.as_str()))
    }
}

/// The root, made once: debootstrap into a `.partial` directory, renamed when complete.
fn debian_root() -> Result<PathBuf> {
    let dir = workspace_root().join("target/glibc");
    let root = dir.join(format!("debian-13-{SUITE}"));
    if !root.join("usr/lib/x86_64-linux-gnu/libc.so.6").exists() {
        ensure_debian_packages(&["debootstrap"])?;
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join("partial");
        let _ = std::fs::remove_dir_all(&partial);
        eprintln!(
            "xtask: debootstrap {SUITE} (Debian 13, glibc {GLIBC}) into {} (about 30 s)",
            root.display()
        );
        run(
            Command::new("debootstrap")
                .args(["--variant=minbase", SUITE])
                .arg(&partial)
                .arg(MIRROR)
                .stdout(std::process::Stdio::null()),
            "debootstrap",
        )?;
        std::fs::rename(&partial, &root)?;
    }
    let version = output(
        Command::new("chroot").arg(&root).args(["ldd", "--version"]),
        "ldd --version in the root",
    )?;
    ensure!(
        version
            .lines()
            .next()
            .is_some_and(|line| line.ends_with(GLIBC)),
        "the Debian root has not glibc {GLIBC}: {version}"
    );
    Ok(root)
}

/// The C fixture's modes, from its table.
fn c_modes() -> Result<Vec<String>> {
    let source = std::fs::read_to_string(workspace_root().join("fixtures/c/leaky.c"))?;
    let modes: Vec<String> = source
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("{\"")?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect();
    ensure!(
        modes.len() > 20,
        "found only {} modes in fixtures/c/leaky.c",
        modes.len()
    );
    Ok(modes)
}

/// What must match between the two glibcs.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// Definitely and indirectly lost, (bytes, blocks).
    lost: [(u64, u64); 2],
    /// (category, bytes, allocations, function) of each stack whose innermost frame is the
    /// fixture's own code, sorted.
    own: Vec<(String, u64, u64, String)>,
    /// (category, allocations) of the stacks glibc made for itself (a thread's TLS vector,
    /// stdio): their sizes are glibc's business and differ between versions (288 and 304
    /// bytes for the DTV of 2.36 and 2.41), their classification must not.
    glibc: Vec<(String, u64)>,
}

/// Modes whose outcome is a race the fixture means to have (the started thread may free its
/// argument before the exit, or not): only what is lost must match.
const RACY: &[&str] = &["start-thread-and-exit", "realloc-race"];

fn verdict(report: &Value, executable: &str, racy: bool) -> Result<Verdict> {
    ensure!(
        report["incomplete"].as_array().is_some_and(Vec::is_empty),
        "incomplete: {}",
        report["incomplete_reasons"]
    );
    ensure!(
        report["dropped"]
            .as_object()
            .is_some_and(|dropped| dropped.is_empty()),
        "dropped: {}",
        report["dropped"]
    );
    let amount = |category: &str| {
        let amount = &report["leak_summary"][category];
        (
            amount["bytes"].as_u64().unwrap_or_default(),
            amount["blocks"].as_u64().unwrap_or_default(),
        )
    };
    let mut verdict = Verdict {
        lost: [amount("definitely_lost"), amount("indirectly_lost")],
        own: Vec::new(),
        glibc: Vec::new(),
    };
    if racy {
        return Ok(verdict);
    }
    for stack in report["stacks"].as_array().context("stacks")? {
        let category = stack["category"].as_str().unwrap_or_default().to_owned();
        let allocations = stack["allocations"].as_u64().unwrap_or_default();
        let first = &stack["frames"][0];
        if first["module"]
            .as_str()
            .is_some_and(|module| module.ends_with(executable))
        {
            verdict.own.push((
                category,
                stack["bytes"].as_u64().unwrap_or_default(),
                allocations,
                first["symbol"].as_str().unwrap_or_default().to_owned(),
            ));
        } else {
            verdict.glibc.push((category, allocations));
        }
    }
    verdict.own.sort();
    verdict.glibc.sort();
    Ok(verdict)
}

/// Runs every program under `memleak exec` with `prefix` in front of it (nothing, or the
/// unshare + chroot), writing reports under `out` (a path as the tracer sees it), and reads
/// them from `out_on_host`.
fn run_all(
    programs: &[Program],
    script_dir: &Path,
    prefix: &[&str],
    bin: &str,
    out_on_host: &Path,
) -> Result<BTreeMap<String, Value>> {
    let _ = std::fs::remove_dir_all(out_on_host);
    std::fs::create_dir_all(out_on_host)?;
    let mut script = String::from("set -u\n");
    for (index, program) in programs.iter().enumerate() {
        script.push_str(&format!(
            "{bin}/cargo-memleak memleak exec --show-reachable --format json --output {bin}/out/{index}.json -- {bin}/{} </dev/null >/dev/null 2>&1\n",
            program.args.join(" ")
        ));
    }
    let script_path = script_dir.join("run.sh");
    std::fs::write(&script_path, script)?;
    let mut command = Command::new(prefix.first().copied().unwrap_or("sh"));
    if prefix.is_empty() {
        command.arg(&script_path);
    } else {
        command.args(&prefix[1..]).arg(format!("{bin}/run.sh"));
    }
    run(&mut command, "the fixtures under cargo memleak exec")?;
    let mut reports = BTreeMap::new();
    for (index, program) in programs.iter().enumerate() {
        let path = out_on_host.join(format!("{index}.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: no report ({})", program.name, path.display()))?;
        reports.insert(program.name.clone(), serde_json::from_str(&text)?);
    }
    Ok(reports)
}

/// `cargo xtask glibc`: the fixtures on this machine's glibc and on Debian 13's.
pub fn check(memleak: &Path) -> Result<()> {
    let root = debian_root()?;
    let opt = root.join("opt/memleak");
    let _ = std::fs::remove_dir_all(&opt);
    std::fs::create_dir_all(&opt)?;
    std::fs::copy(memleak, opt.join("cargo-memleak"))?;
    run(
        Command::new("cc")
            .args(["-Wall", "-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(opt.join("leaky-c"))
            .arg(workspace_root().join("fixtures/c/leaky.c")),
        "cc fixtures/c/leaky.c",
    )?;
    let rust_target = workspace_root().join("target/fixtures/glibc-leaky");
    run(
        cargo()
            .args(["build", "--quiet", "--manifest-path"])
            .arg(workspace_root().join("fixtures/leaky/Cargo.toml"))
            .arg("--target-dir")
            .arg(&rust_target)
            .env("RUSTFLAGS", "-C force-frame-pointers=yes"),
        "cargo build fixtures/leaky",
    )?;
    std::fs::copy(rust_target.join("debug/leaky"), opt.join("leaky-rust"))?;

    let mut programs: Vec<Program> = c_modes()?
        .into_iter()
        .map(|mode| Program {
            name: format!("leaky.c {mode}"),
            args: vec!["leaky-c".into(), mode],
        })
        .collect();
    for mode in [
        "malloc", "calloc", "realloc", "mmap", "vec", "inlined", "thread", "churn",
    ] {
        programs.push(Program {
            name: format!("leaky (Rust) {mode}"),
            args: vec!["leaky-rust".into(), mode.into()],
        });
    }

    let host = run_all(
        &programs,
        &opt,
        &[],
        &opt.display().to_string(),
        &opt.join("out"),
    )?;
    let host_dir = root.join("../host-out");
    let _ = std::fs::remove_dir_all(&host_dir);
    std::fs::rename(opt.join("out"), &host_dir)?;
    let mount_and_chroot = format!(
        "mount -t proc proc {r}/proc && mount --rbind /sys {r}/sys && mount --rbind /dev {r}/dev \
         && exec chroot {r} sh \"$0\"",
        r = root.display()
    );
    let debian = run_all(
        &programs,
        &opt,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount_and_chroot,
        ],
        "/opt/memleak",
        &opt.join("out"),
    )?;

    let ours = output(Command::new("ldd").arg("--version"), "ldd --version")?;
    let ours = ours
        .lines()
        .next()
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or("?")
        .to_owned();
    let mut differences = Vec::new();
    for program in &programs {
        let (executable, racy) = (program.args[0].as_str(), program.racy());
        let host = verdict(&host[&program.name], executable, racy)
            .with_context(|| format!("{} on glibc {ours}", program.name));
        let debian = verdict(&debian[&program.name], executable, racy)
            .with_context(|| format!("{} on glibc {GLIBC}", program.name));
        match (host, debian) {
            (Ok(host), Ok(debian)) if host == debian => {}
            (Ok(host), Ok(debian)) => differences.push(format!(
                "{}: glibc {ours} {host:?}\n  glibc {GLIBC} {debian:?}",
                program.name
            )),
            (host, debian) => {
                for err in [host.err(), debian.err()].into_iter().flatten() {
                    differences.push(format!("{err:#}"));
                }
            }
        }
    }
    if !differences.is_empty() {
        bail!(
            "{} of {} fixture runs differ between glibc {ours} and {GLIBC}:\n{}",
            differences.len(),
            programs.len(),
            differences.join("\n")
        );
    }
    println!(
        "xtask glibc: {} fixture runs give the same verdicts on glibc {ours} and {GLIBC}",
        programs.len()
    );
    Ok(())
}
