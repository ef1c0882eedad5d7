//! Builds the eBPF object (memleak-ebpf, for bpfel-unknown-none) into OUT_DIR with aya-build,
//! so a plain `cargo build` produces a working binary.

use anyhow::{Context as _, bail};

/// The nightly the eBPF programs build with (memleak-ebpf/rust-toolchain.toml says the same).
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not on PATH; it links the eBPF programs. \
             Run `cargo xtask bootstrap` (installs it for this machine's nightly LLVM)."
        );
    }
    let ebpf = aya_build::Package {
        name: "memleak-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../memleak-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN)).context(
        "building the eBPF programs failed; `cargo xtask bootstrap` installs the toolchain",
    )?;
    // With AYA_BUILD_SKIP=1 (for `cargo check` and the like) aya-build builds nothing: leave an
    // empty object, which the tracer refuses to load with a clear message.
    let object = std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR is set")?)
        .join("memleak-ebpf");
    if !object.exists() {
        std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
    }
    Ok(())
}
