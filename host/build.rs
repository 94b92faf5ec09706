//! Builds the first-party plugins (and the test fixtures) for `wasm32-wasip2` so the `anode`
//! binary can carry them: a fresh node has working connectors with nothing to install.
//!
//! The plugins are built by a nested `cargo build` into a target directory of their own
//! (`target/wasm-plugins`), so it never waits on the lock of the build that runs this script.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";
const WASM_PROFILE: &str = "plugin";
/// The plugins every node carries (crates under `plugins/`).
const FIRST_PARTY: &[&str] = &[
    "binance-trades",
    "coinbase",
    "kraken-ticker",
    "http-json",
    "evm-blocks",
    "evm-logs",
    "filter",
    "candles",
];

fn main() {
    let host_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = host_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    for watched in [
        "plugins",
        "plugin-sdk",
        "wit",
        "Cargo.lock",
        "host/tests/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=ANODE_PREBUILT_PLUGINS");

    let first_party: Vec<(String, PathBuf)> = FIRST_PARTY
        .iter()
        .map(|name| (name.to_string(), root.join("plugins").join(name)))
        .collect();
    // The test fixtures (hostile and legacy plugins) serve only the tests, which build with
    // the debug profile: a release build (the demo, a deployment, the benchmarks) skips them.
    let fixtures = if env::var("PROFILE").as_deref() == Ok("release") {
        Vec::new()
    } else {
        crate_names(&host_dir.join("tests/fixtures"))
    };

    // A packager may hand over plugins built elsewhere (same names, same target layout).
    let wasm_dir = match env::var_os("ANODE_PREBUILT_PLUGINS") {
        Some(dir) => PathBuf::from(dir),
        None => build_plugins(&root, first_party.iter().chain(&fixtures)),
    };

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let mut bundled = String::from(
        "/// The first-party plugins built with this binary: (crate name, component bytes).\n\
         pub(crate) const BUNDLED: &[(&str, &[u8])] = &[\n",
    );
    for (name, _) in &first_party {
        let file = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !file.exists() {
            panic!("{} is missing after the plugin build", file.display());
        }
        writeln!(
            bundled,
            "    ({name:?}, include_bytes!({:?})),",
            file.display().to_string()
        )
        .expect("write to a String");
    }
    bundled.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), bundled).expect("write bundled.rs");
    // Tests and benchmarks find every built component here (fixtures only in debug builds).
    println!("cargo:rustc-env=ANODE_WASM_DIR={}", wasm_dir.display());
}

/// `(package name, crate dir)` of every crate directly under `dir`.
fn crate_names(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut crates: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|path| {
            let manifest = std::fs::read_to_string(path.join("Cargo.toml")).ok()?;
            let name = manifest
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))?
                .trim_matches('"')
                .to_owned();
            Some((name, path))
        })
        .collect();
    crates.sort();
    crates
}

fn build_plugins<'a>(root: &Path, crates: impl Iterator<Item = &'a (String, PathBuf)>) -> PathBuf {
    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("wasm-plugins");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "--target", WASM_TARGET, "--profile", WASM_PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in crates {
        command.args(["-p", name]);
    }
    // Flags and wrappers meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo: {e}"));
    if !status.success() {
        panic!(
            "building the plugins for {WASM_TARGET} failed (see above). If the target is \
             missing, install it with `rustup target add {WASM_TARGET}`."
        );
    }
    target_dir.join(WASM_TARGET).join(WASM_PROFILE)
}
