#!/usr/bin/env bash
# Runs aNode's whole test suite: native plugin tests, host tests against real WebAssembly
# components, CLI tests. Installs what it can (the wasm32-wasip2 target) and says clearly
# what is missing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is not installed: install Rust from https://rustup.rs (1.95 or newer)"

# The plugins are WebAssembly components built for wasm32-wasip2.
if command -v rustup >/dev/null; then
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        say "installing the wasm32-wasip2 target"
        rustup target add wasm32-wasip2
    fi
elif ! rustc --print target-list | grep -qx wasm32-wasip2; then
    die "rustc cannot target wasm32-wasip2 and rustup is not available to add it"
fi

say "cargo test --workspace"
exec cargo test --workspace "$@"
