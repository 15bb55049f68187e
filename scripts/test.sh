#!/usr/bin/env bash
# The whole test suite: installs the system packages it needs, then checks
# formatting and lints and runs every test, including those against real
# pcscd + vpcd, OpenSC, yubico-piv-tool and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/virtcard-test.log
