#!/usr/bin/env bash
# Builds the release `anode` binary, with the first-party plugins inside it, and prints its
# path (the only thing written to stdout). deploy/Dockerfile and deploy/install.sh both call
# this script, so the image, a host install and a hand-made build are built the same way.
#
#   scripts/build-release.sh            build; the last line of stdout is the binary's path
#   scripts/build-release.sh --dry-run  print the commands it would run, one per line; run none
#
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_TARGET=wasm32-wasip2
BUILD=(cargo build --release --locked -p anode)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; }

dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument \`$arg\` (try --help)" ;;
    esac
done

# Runs a command, its output on stderr; with --dry-run only prints it.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '%s\n' "$*"
    else
        say "$*"
        "$@" >&2
    fi
}

if [ "$dry_run" = 0 ]; then
    command -v cargo >/dev/null \
        || die "cargo is not installed: install Rust 1.95 or newer (https://rustup.rs) and run again"
fi

# The plugins are WebAssembly components: host/build.rs builds them for wasm32-wasip2.
if command -v rustup >/dev/null; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"; then
        run rustup target add "$WASM_TARGET"
    fi
elif [ "$dry_run" = 0 ] && ! rustc --print target-list | grep -qx "$WASM_TARGET"; then
    die "rustc cannot target $WASM_TARGET and rustup is not there to add it: install the target and run again"
fi

run "${BUILD[@]}"

binary="${CARGO_TARGET_DIR:-target}/release/anode"
case "$binary" in /*) ;; *) binary="$PWD/$binary" ;; esac
if [ "$dry_run" = 0 ]; then
    [ -x "$binary" ] || die "the build finished but $binary is missing"
    printf '%s\n' "$binary"
fi
