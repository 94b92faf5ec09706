#!/usr/bin/env bash
# Runs aNode's whole test suite: native plugin tests, host tests against real WebAssembly
# components, CLI tests, ingestion tests against the feed simulator and a real PostgreSQL, the
# dashboard in a headless Chromium, the API against schemathesis. Installs what it can (the
# wasm32-wasip2 target, PostgreSQL, NATS with JetStream, Chromium, a Python virtualenv with the
# contract tools and componentize-py, componentize-js and ganache (a real EVM node) from npm,
# mdbook from crates.io for the book in docs/) and says clearly what is missing otherwise.
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

# openssl makes the certificates of the PostgreSQL-over-TLS test.
if ! command -v openssl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing openssl (the TLS tests make certificates with it)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null \
            || die "could not install openssl; install it and run again"
    else
        die "openssl is missing: install it (Debian: sudo apt-get install openssl)"
    fi
fi

# iproute2's `ip` makes the network namespaces of the multi-host tests (as root); elsewhere
# those tests say why they cannot run and skip.
if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing iproute2 (the multi-host tests make network namespaces with ip)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; } \
        || die "could not install iproute2; install it (apt-get install iproute2) and run again"
fi
if [ "$(id -u)" != 0 ]; then
    say "not root: the multi-host tests (network namespaces) will skip, saying so"
fi

# PostgreSQL: the ingestion tests write to a real server (ANODE_TEST_PG, default the local
# one on 5432) and start private servers of their own with initdb/pg_ctl to stop and restart.
pg_bin() {
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/pg_ctl" ]; then
        pg_config --bindir; return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_answers() { "$(pg_bin)/psql" "$1/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing PostgreSQL (the ingestion tests need a real server)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
            || die "could not install PostgreSQL; install it (apt-get install postgresql) and run again"
    else
        die "PostgreSQL's server programs (initdb, pg_ctl) are missing: install them (Debian: sudo apt-get install postgresql) or set ANODE_PG_BIN"
    fi
fi
export ANODE_PG_BIN="${ANODE_PG_BIN:-$(pg_bin)}"
if [ -z "${ANODE_TEST_PG:-}" ]; then
    if pg_answers "postgres://postgres@127.0.0.1:5432"; then
        export ANODE_TEST_PG="postgres://postgres@127.0.0.1:5432"
    else
        # No usable server on 5432: run one of our own (trust auth, loopback only).
        port=55432
        dir="$PWD/target/test-pg"
        export ANODE_TEST_PG="postgres://postgres@127.0.0.1:$port"
        if ! pg_answers "$ANODE_TEST_PG"; then
            say "starting a test PostgreSQL in $dir on 127.0.0.1:$port"
            mkdir -p "$dir"
            [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || die "user postgres is missing (PostgreSQL refuses to run as root)"; chown postgres "$dir"; }
            [ -f "$dir/data/PG_VERSION" ] || as_pg "$ANODE_PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null \
                || die "initdb failed"
            as_pg "$ANODE_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
                -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" start >/dev/null \
                || die "PostgreSQL did not start: see $dir/log"
        fi
    fi
fi
say "PostgreSQL for tests: $ANODE_TEST_PG"

# NATS with JetStream: the JetStream sink tests publish to the server on 127.0.0.1:4222
# (ANODE_TEST_NATS names another) and start private ones with nats-server to stop and restart.
if ! command -v nats-server >/dev/null && [ -z "${ANODE_NATS_SERVER:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing nats-server (the JetStream sink tests run real servers)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null; } \
            || die "could not install nats-server; install it (apt-get install nats-server) and run again"
    else
        die "nats-server is missing: install it (Debian: sudo apt-get install nats-server) or set ANODE_NATS_SERVER"
    fi
fi
if [ -z "${ANODE_TEST_NATS:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    nats_dir="$PWD/target/test-nats"
    say "starting a NATS server with JetStream on 127.0.0.1:4222 (data in $nats_dir)"
    mkdir -p "$nats_dir"
    nohup "${ANODE_NATS_SERVER:-nats-server}" -js -a 127.0.0.1 -p 4222 -sd "$nats_dir" >"$nats_dir/log" 2>&1 &
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || die "nats-server did not start: see $nats_dir/log"
fi

# A headless browser: the dashboard tests drive Debian's Chromium over WebDriver (chromedriver).
have_browser() {
    { [ -n "${ANODE_CHROMIUM:-}" ] || command -v chromium >/dev/null; } \
        && { [ -n "${ANODE_CHROMEDRIVER:-}" ] || command -v chromedriver >/dev/null; }
}
if ! have_browser; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Chromium and chromedriver (the dashboard tests drive a headless browser)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } \
            || die "could not install Chromium; install it (apt-get install chromium chromium-driver) and run again"
    else
        die "chromium and chromedriver are missing: install them (Debian: sudo apt-get install chromium chromium-driver) or set ANODE_CHROMIUM and ANODE_CHROMEDRIVER"
    fi
fi

# Python tools, pinned, in a virtualenv of their own: schemathesis (OpenAPI contract tester),
# the reference Prometheus client's text parser, componentize-py (builds the Python plugin
# the polyglot test makes with `anode plugin new --lang python`), and websockets (the one
# dependency of the Python subscriber client in clients/python, tested against live nodes).
py_tools="$PWD/target/test-tools/py"
py_want="schemathesis==4.32.5 prometheus-client==0.26.0 componentize-py==0.25.1 websockets==15.0.1"
if [ -z "${ANODE_TEST_PYTHON:-}" ]; then
    if [ "$(cat "$py_tools/.installed" 2>/dev/null)" != "$py_want" ]; then
        command -v python3 >/dev/null || die "python3 is missing: install Python 3.9+ (Debian: apt-get install python3 python3-venv)"
        say "installing $py_want into $py_tools"
        rm -rf "$py_tools"
        python3 -m venv "$py_tools" \
            || die "python3 cannot make a virtualenv: install venv (Debian: apt-get install python3-venv)"
        # shellcheck disable=SC2086
        "$py_tools/bin/pip" install -q $py_want \
            || die "could not install $py_want from PyPI; check the network or set ANODE_TEST_PYTHON to a Python that has them"
        echo "$py_want" > "$py_tools/.installed"
    fi
    export ANODE_TEST_PYTHON="$py_tools/bin/python"
fi

# componentize-js, pinned, for the JavaScript plugin the polyglot test makes.
js_tools="$PWD/target/test-tools/js"
js_want="@bytecodealliance/componentize-js@0.23.0"
if [ -z "${ANODE_TEST_NODE_MODULES:-}" ]; then
    if [ "$(cat "$js_tools/.installed" 2>/dev/null)" != "$js_want" ]; then
        command -v npm >/dev/null || die "node and npm are missing: install Node.js 20+ (Debian: apt-get install nodejs npm)"
        say "installing $js_want into $js_tools"
        rm -rf "$js_tools"
        mkdir -p "$js_tools"
        (cd "$js_tools" && echo '{"private":true}' > package.json \
            && npm install --no-audit --no-fund --loglevel=error "$js_want" >/dev/null) \
            || die "could not install $js_want from npm; check the network or set ANODE_TEST_NODE_MODULES to a node_modules that has it"
        echo "$js_want" > "$js_tools/.installed"
    fi
    export ANODE_TEST_NODE_MODULES="$js_tools/node_modules"
fi

# mdbook, pinned, from crates.io: the book test (host/tests/book.rs) builds the book in docs/
# with it and checks every link of the book and of README.md.
mdbook_tools="$PWD/target/test-tools/mdbook"
mdbook_version="0.5.4"
mdbook_want="mdbook@$mdbook_version"
if [ -z "${ANODE_MDBOOK:-}" ]; then
    if [ "$(cat "$mdbook_tools/.installed" 2>/dev/null)" != "$mdbook_want" ] || [ ! -x "$mdbook_tools/bin/mdbook" ]; then
        say "installing $mdbook_want into $mdbook_tools (it compiles, a few minutes)"
        cargo install --quiet --locked mdbook --version "$mdbook_version" --root "$mdbook_tools" \
            || die "could not install $mdbook_want from crates.io; check the network or set ANODE_MDBOOK to an mdbook binary"
        echo "$mdbook_want" > "$mdbook_tools/.installed"
    fi
    export ANODE_MDBOOK="$mdbook_tools/bin/mdbook"
fi

# ganache, pinned: a real EVM node (JSON-RPC) the chain tests start, reorganise
# (evm_snapshot / evm_revert / evm_mine) and compare the stored chain with.
ganache_tools="$PWD/target/test-tools/ganache"
ganache_want="ganache@7.9.2"
if [ -z "${ANODE_GANACHE:-}" ]; then
    if [ "$(cat "$ganache_tools/.installed" 2>/dev/null)" != "$ganache_want" ]; then
        command -v npm >/dev/null || die "node and npm are missing: install Node.js 20+ (Debian: apt-get install nodejs npm)"
        say "installing $ganache_want into $ganache_tools"
        rm -rf "$ganache_tools"
        mkdir -p "$ganache_tools"
        (cd "$ganache_tools" && echo '{"private":true}' > package.json \
            && npm install --no-audit --no-fund --loglevel=error "$ganache_want" >/dev/null) \
            || die "could not install $ganache_want from npm; check the network or set ANODE_GANACHE to a ganache 7 command"
        echo "$ganache_want" > "$ganache_tools/.installed"
    fi
    export ANODE_GANACHE="$ganache_tools/node_modules/.bin/ganache"
fi

# The corpus of frames real venues and Ethereum nodes sent (kept beside the project, never in
# it): the connectors' conformance tests read it; without it they check nothing and say so.
frames_dir="${ANODE_REALFRAMES:-$PWD/../shared/realframes}"
if [ -d "$frames_dir" ]; then
    export ANODE_REALFRAMES="$(cd "$frames_dir" && pwd)"
    say "real venue frames for the conformance tests: $ANODE_REALFRAMES"
else
    say "NOT CHECKED: no corpus of real venue frames at $frames_dir (set ANODE_REALFRAMES); the connectors' conformance to recorded frames is not tested in this run"
fi

say "cargo test --workspace"
exec cargo test --workspace "$@"
