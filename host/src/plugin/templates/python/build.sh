#!/bin/sh
# Build {name}.wasm, an aNode {kind} component, from app.py with componentize-py.
#   python3 -m venv .venv && .venv/bin/pip install -r requirements-build.txt
#   PATH=.venv/bin:$PATH sh build.sh
set -eu
cd "$(dirname "$0")"
componentize-py --wit-path wit/plugin.wit --world {kind} componentize app --output {name}.wasm
echo "built {name}.wasm ($(wc -c < {name}.wasm) bytes)"
