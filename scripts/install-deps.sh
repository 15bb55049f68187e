#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages virtcard's demo and tests use, when missing.
set -euo pipefail

packages=(
  pcscd vsmartcard-vpcd pcsc-tools libpcsclite-dev   # PC/SC stack and vpcd driver
  opensc opensc-pkcs11                                # OpenSC tools and PKCS#11 module
  yubico-piv-tool softhsm2 libnss3-tools              # PIV tooling, PKCS#11 and NSS tools
  libssl-dev pkg-config openssl                       # build dependencies
  qemu-system-x86 busybox-static                      # QEMU guest tests
  util-linux                                          # unshare for the private pcscd
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (https://rustup.rs) and run this again" >&2
  exit 1
fi
