//! Puts the eBPF object (memleak-ebpf, for bpfel-unknown-none) into OUT_DIR, so a plain
//! `cargo build` or `cargo install` produces a working binary.
//!
//! Two sources, chosen by `CARGO_MEMLEAK_EBPF`:
//! - `source`: build memleak-ebpf from this repository with the pinned nightly, `rust-src` and
//!   bpf-linker (what `cargo xtask bootstrap` installs);
//! - `shipped`: copy `ebpf/memleak-ebpf.bpf.o`, the object xtask built from the same source and
//!   committed (bpfel objects do not depend on the host), so stable Rust alone installs it;
//! - unset: `source` when the eBPF sources and their toolchain are both here, else `shipped`.
//!
//! Invariants: the source build is reproducible (paths remapped, one codegen unit), so
//! `cargo xtask test` can prove the shipped object is what the source builds. Nothing is printed
//! on success: cargo shows build-script output as warnings, and a normal build has none. A
//! failed build's own output is passed up whole in the error.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The nightly the eBPF programs build with (memleak-ebpf/rust-toolchain.toml says the same).
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";
/// The object committed for builds without the eBPF toolchain (`cargo xtask ebpf` writes it).
const SHIPPED: &str = "ebpf/memleak-ebpf.bpf.o";
/// The shipped object's `bpf_target_arch`: its programs read x86_64 `pt_regs`.
const SHIPPED_ARCH: &str = "x86_64";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env("OUT_DIR")?).join("memleak-ebpf");
    let shipped = manifest_dir.join(SHIPPED);
    let sources = manifest_dir.join("../memleak-ebpf");
    println!("cargo::rerun-if-env-changed=CARGO_MEMLEAK_EBPF");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed={}", shipped.display());

    let choice = std::env::var("CARGO_MEMLEAK_EBPF").unwrap_or_default();
    let build_from_source = match choice.as_str() {
        "source" => true,
        "shipped" => false,
        "" => sources.join("Cargo.toml").exists() && toolchain_missing().is_none(),
        other => bail!("CARGO_MEMLEAK_EBPF={other} is not `source` or `shipped`"),
    };
    if build_from_source {
        if let Some(missing) = toolchain_missing() {
            bail!(
                "CARGO_MEMLEAK_EBPF=source, but {missing}. Run `cargo xtask bootstrap`, or build \
                 with the shipped object (CARGO_MEMLEAK_EBPF=shipped)."
            );
        }
        for dir in ["../memleak-ebpf", "../memleak-common"] {
            println!(
                "cargo::rerun-if-changed={}",
                manifest_dir.join(dir).display()
            );
        }
        let object = build_from(&sources, &PathBuf::from(env("OUT_DIR")?))?;
        std::fs::copy(&object, &out).with_context(|| format!("copying {}", object.display()))?;
        origin(&out, "source")?;
    } else {
        let arch = env("CARGO_CFG_TARGET_ARCH")?;
        if arch != SHIPPED_ARCH {
            bail!(
                "the shipped eBPF object is for {SHIPPED_ARCH}, this build is for {arch}: build \
                 it from source (`cargo xtask bootstrap`, then CARGO_MEMLEAK_EBPF=source)"
            );
        }
        std::fs::copy(&shipped, &out)
            .with_context(|| format!("copying the shipped eBPF object {}", shipped.display()))?;
        origin(&out, "shipped")?;
    }
    Ok(())
}

/// Records where the object came from: in `OBJECT.origin` (for `cargo xtask ebpf --check`)
/// and in the binary (`cargo memleak --version`).
fn origin(object: &Path, origin: &str) -> anyhow::Result<()> {
    println!("cargo::rustc-env=CARGO_MEMLEAK_EBPF_ORIGIN={origin}");
    std::fs::write(object.with_extension("origin"), origin).context("writing the origin file")
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("cargo sets {name} for build scripts"))
}

/// What the source build lacks on this machine, if anything.
fn toolchain_missing() -> Option<String> {
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not on PATH".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output();
    match sysroot {
        Ok(output) if output.status.success() => {
            let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let core = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
            (!core.exists()).then(|| format!("{EBPF_TOOLCHAIN} has no rust-src component"))
        }
        _ => Some(format!("the {EBPF_TOOLCHAIN} toolchain is not installed")),
    }
}

/// Builds memleak-ebpf's binary into a target directory under `out_dir` and returns its path.
///
/// The same command aya-build runs, with its output captured rather than relayed as warnings,
/// and with every path that would end up in the object's debug info and BTF (this checkout, the
/// cargo registry, the toolchain's `core` sources) remapped, so that any checkout builds the
/// same bytes.
fn build_from(sources: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let workspace = sources
        .parent()
        .context("memleak-ebpf has a parent directory")?;
    let workspace = workspace
        .canonicalize()
        .context("the workspace directory exists")?;
    let cargo_home = home_dir("CARGO_HOME", ".cargo");
    let rustup_home = home_dir("RUSTUP_HOME", ".rustup");
    let mut rustflags = vec![
        format!(
            "--cfg=bpf_target_arch=\"{}\"",
            env("CARGO_CFG_TARGET_ARCH")?
        ),
        "-Cdebuginfo=2".into(),
        // BPF ISA v3 (kernel 5.12+; multi-uprobe links need 6.6 anyway): atomic fetch-and-add
        // and compare-and-swap, for the live heap's peak.
        "-Ctarget-cpu=v3".into(),
        "-Clink-arg=--btf".into(),
        format!("--remap-path-prefix={}=/memleak", workspace.display()),
    ];
    for (home, to) in [(cargo_home, "/cargo"), (rustup_home, "/rustup")] {
        if let Some(home) = home {
            rustflags.push(format!("--remap-path-prefix={}={to}", home.display()));
        }
    }
    let target_dir = out_dir.join("ebpf-target");
    let output = Command::new("rustup")
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            "memleak-ebpf",
            "--bins",
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        // The outer build's compiler and wrappers are for the host, not for BPF.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .output()
        .context("running `rustup run` to build the eBPF programs")?;
    if !output.status.success() {
        bail!(
            "building the eBPF programs failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(target_dir.join("bpfel-unknown-none/release/memleak-ebpf"))
}

/// `$NAME`, or `~/DEFAULT`: where cargo or rustup keep what gets compiled in.
fn home_dir(name: &str, default: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(name) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(default),
    };
    dir.canonicalize().ok()
}
