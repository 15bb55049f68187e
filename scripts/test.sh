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
echo "== cargo deny"
if command -v cargo-deny >/dev/null; then
  # Advisories need the RustSec database fetched from GitHub; check them
  # with `cargo deny check advisories` where it can be reached.
  cargo deny --log-level error check licenses bans sources
else
  echo "cargo-deny is not installed; skipped (cargo install cargo-deny --locked)"
fi
echo "== fuzz: every target for ${VIRTCARD_FUZZ_SECONDS:-10} s"
bash scripts/fuzz.sh "${VIRTCARD_FUZZ_SECONDS:-10}"
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/virtcard-test.log
