//! Builds the eBPF object (memleak-ebpf, for bpfel-unknown-none) into OUT_DIR with aya-build,
//! so a plain `cargo build` produces a working binary.

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let object = std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR is set")?)
        .join("memleak-ebpf");
    // `cargo xtask` builds the eBPF object itself and passes it here (see xtask's
    // `build_ebpf`); a plain `cargo build` builds it with aya-build.
    println!("cargo:rerun-if-env-changed={PREBUILT}");
    if let Some(prebuilt) = std::env::var_os(PREBUILT) {
        println!("cargo:rerun-if-changed={}", prebuilt.to_string_lossy());
        std::fs::copy(&prebuilt, &object)
            .with_context(|| format!("copying {PREBUILT}={}", prebuilt.to_string_lossy()))?;
        return Ok(());
    }
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
    // On fresh clones the nested cargo's first rustc probe has failed inside this build
    // script (it read another compiler's output as its input); a second attempt may pass.
    if let Err(first) = aya_build::build_ebpf([ebpf()], aya_build::Toolchain::default()) {
        println!("cargo:warning=building the eBPF programs failed once, retrying: {first:#}");
        aya_build::build_ebpf([ebpf()], aya_build::Toolchain::default()).context(
            "building the eBPF programs failed; `cargo xtask bootstrap` installs the toolchain, \
             and `cargo xtask test`/`demo` build the eBPF object outside of cargo's build scripts",
        )?;
    }
    // With AYA_BUILD_SKIP=1 (for `cargo check` and the like) aya-build builds nothing: leave an
    // empty object, which the tracer refuses to load with a clear message.
    if !object.exists() {
        std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
    }
    Ok(())
}

/// Path of an eBPF object built beforehand (by `cargo xtask`).
const PREBUILT: &str = "MEMLEAK_EBPF_OBJECT";

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
