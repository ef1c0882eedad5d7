//! A test sees the environment `cargo test` gives it: fixtures/environment's test writes down
//! its environment and working directory under `cargo test` and under `cargo memleak test`
//! (started the way users start it, as cargo's subcommand), and the two must be the same,
//! name for name and value for value, once the target directory's `memleak/` and cargo's
//! hashes are set aside. The fixture has a binary (`CARGO_BIN_EXE_environment`), its build
//! script sets a variable and a native library directory, and its `.cargo/config.toml` an
//! `[env]` table (plain, forced, relative), so every source of cargo's environment is in it. It runs in a copy outside this workspace,
//! whose own `.cargo/config.toml` would otherwise apply (and alias `cargo memleak`).

use std::{collections::BTreeMap, path::Path, process::Command};

use memleak_tests::{cargo_memleak, privileged, workspace_root};

/// The fixture's test run by `cargo args...` in `dir`: the environment it wrote down.
fn environment_under(dir: &Path, args: &[&str], name: &str) -> BTreeMap<String, String> {
    let out = dir.join(format!("{name}.env"));
    let memleak_dir = cargo_memleak().parent().expect("a directory");
    let path = std::env::join_paths(std::iter::once(memleak_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    let output = Command::new("cargo")
        .args(args)
        .args(["--test", "environment"])
        .current_dir(dir)
        .env("PATH", path)
        .env("ENVIRONMENT_OUT", &out)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|err| panic!("cargo {args:?} wrote no environment: {err}"));
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| *name != "ENVIRONMENT_OUT")
        .map(|(name, value)| (name.to_owned(), normalized(value)))
        .collect()
}

/// `value` with cargo memleak's target directory (`target/memleak/`) as cargo's and each
/// 16-digit hash cargo puts in a directory name as `#`.
fn normalized(value: &str) -> String {
    let value = value.replace("/target/memleak/", "/target/");
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(at) = rest.find('-') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex == 16 {
            out.push('#');
            rest = &rest[16..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn a_test_sees_the_environment_cargo_test_gives_it() {
    if !privileged("a_test_sees_the_environment_cargo_test_gives_it") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("memleak-environment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fixture = workspace_root().join("fixtures/environment");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "README.md",
        "tests/environment.rs",
        "src/main.rs",
        ".cargo/config.toml",
    ] {
        let to = dir.join(file);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("a directory");
        std::fs::copy(fixture.join(file), &to).expect("the fixture is copied");
    }
    let plain = environment_under(&dir, &["test", "--quiet"], "plain");
    let traced = environment_under(&dir, &["memleak", "test", "--quiet"], "traced");

    // What the fixture arranged is there, as cargo sets it.
    let shown = dir.display().to_string();
    for (name, value) in [
        ("(cwd)", shown.clone()),
        ("FROM_BUILD_SCRIPT", "set by build.rs".to_owned()),
        ("FROM_CONFIG", "set by .cargo/config.toml".to_owned()),
        ("FORCED_FROM_CONFIG", "forced".to_owned()),
        ("RELATIVE_FROM_CONFIG", format!("{shown}/data")),
        ("CARGO_PKG_RUST_VERSION", "1.85".to_owned()),
        ("CARGO_PKG_VERSION_PRE", "alpha.2".to_owned()),
        (
            "OUT_DIR",
            format!("{shown}/target/debug/build/environment-#/out"),
        ),
    ] {
        assert_eq!(plain.get(name), Some(&value), "cargo test's {name}");
    }
    let library_path = &plain["LD_LIBRARY_PATH"];
    assert!(
        library_path.starts_with(&format!(
            "{shown}/target/debug/build/environment-#/out/native:{shown}/target/debug:"
        )),
        "{library_path}"
    );
    assert!(plain.contains_key("CARGO"), "{plain:#?}");

    // And the same under cargo memleak, name for name.
    for (name, value) in &plain {
        assert_eq!(
            traced.get(name),
            Some(value),
            "{name} under cargo memleak test"
        );
    }
    let extra: Vec<&String> = traced
        .keys()
        .filter(|name| !plain.contains_key(*name))
        .collect();
    assert!(
        extra.is_empty(),
        "set only under cargo memleak test: {extra:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
