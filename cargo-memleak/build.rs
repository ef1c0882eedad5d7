//! Builds the eBPF object (memleak-ebpf, for bpfel-unknown-none) into OUT_DIR with aya-build,
//! so a plain `cargo build` produces a working binary.

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not on PATH; it links the eBPF programs. \
             Run `cargo xtask bootstrap` (installs it for this machine's nightly LLVM)."
        );
    }
    isolate_nested_cargo()?;
    let ebpf = || aya_build::Package {
        name: "memleak-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../memleak-ebpf"),
        ..Default::default()
    };
    // Under load (a fresh build compiling every dependency at once) the nested cargo's first
    // rustc probe has been seen to fail; a second attempt runs on a quieter machine.
    if let Err(first) = aya_build::build_ebpf([ebpf()], aya_build::Toolchain::default()) {
        println!("cargo:warning=building the eBPF programs failed once, retrying: {first:#}");
        aya_build::build_ebpf([ebpf()], aya_build::Toolchain::default()).context(
            "building the eBPF programs failed; `cargo xtask bootstrap` installs the toolchain",
        )?;
    }
    // With AYA_BUILD_SKIP=1 (dependencies-only builds, see xtask) aya-build builds nothing:
    // leave an empty object, which the tracer refuses to load with a clear message.
    let object = std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR is set")?)
        .join("memleak-ebpf");
    if !object.exists() {
        std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
    }
    Ok(())
}

/// aya-build runs a nested nightly cargo, which probes rustc with `rustc -` (source on stdin).
/// Seen on a fresh clone under load: that probe read rustc's own warnings as its source, which
/// happens when fd 0 is closed somewhere up the chain and a pipe takes its number. So: give
/// every child an inheritable /dev/null as stdin, and let the nested cargo run its own
/// jobserver rather than inherit ours by fd number.
fn isolate_nested_cargo() -> anyhow::Result<()> {
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    // dup2 leaves the new fd 0 inheritable (close-on-exec is not copied).
    nix::unistd::dup2_stdin(&null).context("making /dev/null the build script's stdin")?;
    for var in ["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"] {
        // SAFETY: the build script is single-threaded here, before any child is spawned.
        unsafe { std::env::remove_var(var) };
    }
    Ok(())
}
