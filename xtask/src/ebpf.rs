//! The shipped eBPF object, `cargo-memleak/ebpf/memleak-ebpf.bpf.o`: what lets stable Rust
//! alone build and install cargo-memleak (its build script copies it when the eBPF toolchain is
//! absent).
//!
//! `cargo xtask ebpf` builds cargo-memleak as `cargo build` does here (after `cargo xtask
//! bootstrap` its build script builds memleak-ebpf from source, and says so in
//! `memleak-ebpf.origin`) and writes the object; `--check` (run by `cargo xtask test`) fails
//! when the committed object is not byte for byte what the source builds. The build is
//! reproducible: it remaps every path it compiles in.

use std::{io::BufRead as _, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, workspace_root};

/// Where the object is committed, relative to the workspace.
pub const SHIPPED: &str = "cargo-memleak/ebpf/memleak-ebpf.bpf.o";

/// Builds the object from source and returns its path (in cargo-memleak's OUT_DIR).
fn build_from_source() -> Result<PathBuf> {
    let output = cargo()
        .args([
            "build",
            "--package",
            "cargo-memleak",
            "--message-format",
            "json",
        ])
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo build -p cargo-memleak: could not start")?;
    if !output.status.success() {
        bail!("cargo build -p cargo-memleak failed");
    }
    for line in output.stdout.as_slice().lines() {
        let message: serde_json::Value = serde_json::from_str(&line?)?;
        if message["reason"] == "build-script-executed"
            && message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("cargo-memleak"))
        {
            let out_dir = PathBuf::from(message["out_dir"].as_str().context("out_dir")?);
            let origin = std::fs::read_to_string(out_dir.join("memleak-ebpf.origin"))?;
            if origin.trim() != "source" {
                bail!(
                    "cargo-memleak's build script used the {} object, not the source: is the \
                     eBPF toolchain installed (cargo xtask bootstrap)?",
                    origin.trim()
                );
            }
            return Ok(out_dir.join("memleak-ebpf"));
        }
    }
    bail!("cargo reported no build-script run for cargo-memleak")
}

/// `cargo xtask ebpf [--check]`.
pub fn run(check: bool) -> Result<()> {
    let built = build_from_source()?;
    let built_bytes =
        std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let shipped = workspace_root().join(SHIPPED);
    if check {
        let shipped_bytes = std::fs::read(&shipped).unwrap_or_default();
        if shipped_bytes != built_bytes {
            bail!(
                "{SHIPPED} ({} bytes) is not what memleak-ebpf builds ({} bytes): run `cargo \
                 xtask ebpf` and commit it",
                shipped_bytes.len(),
                built_bytes.len()
            );
        }
        println!(
            "xtask ebpf: {SHIPPED} is what the source builds ({} bytes)",
            built_bytes.len()
        );
        return Ok(());
    }
    std::fs::write(&shipped, &built_bytes)
        .with_context(|| format!("writing {}", shipped.display()))?;
    println!("xtask ebpf: wrote {SHIPPED} ({} bytes)", built_bytes.len());
    Ok(())
}
