#!/usr/bin/env bash
# Demo: serve virtcard's sample card through pcscd's vpcd driver and show that
# OpenSC sees it like a physical card.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

cargo build --release --quiet --bin virtcard
bin=target/release/virtcard

started_pcscd=""
cleanup() {
  [ -n "${card_pid:-}" ] && kill "$card_pid" 2>/dev/null && wait "$card_pid" 2>/dev/null || true
  if [ -n "$started_pcscd" ]; then kill "$started_pcscd" 2>/dev/null || true; fi
}
trap cleanup EXIT

if ! timeout 5 pcsc_scan -r >/dev/null 2>&1; then
  echo "== starting pcscd (with the vpcd driver from /etc/reader.conf.d/vpcd)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo pcscd --foreground >/tmp/virtcard-demo-pcscd.log 2>&1 &
  started_pcscd=$!
  for _ in $(seq 50); do timeout 2 pcsc_scan -r >/dev/null 2>&1 && break; sleep 0.1; done
fi
if ! timeout 5 pcsc_scan -r 2>/dev/null | grep -q "Virtual PCD"; then
  echo "pcscd runs without the vpcd driver: restart it so it reads /etc/reader.conf.d/vpcd" >&2
  echo "  (sudo systemctl restart pcscd), then run this demo again" >&2
  exit 1
fi

echo "== virtcard vpcd: the sample ISO 7816-4 card in reader 'Virtual PCD 00 00'"
"$bin" vpcd &
card_pid=$!

for _ in $(seq 50); do
  opensc-tool -r 'Virtual PCD 00 00' -a >/dev/null 2>&1 && break
  sleep 0.2
done

echo "== opensc-tool --list-readers"
opensc-tool --list-readers
echo "== opensc-tool -r 'Virtual PCD 00 00' --atr"
opensc-tool -r 'Virtual PCD 00 00' --atr
echo "== SELECT MF, SELECT the sample application, READ BINARY of its first EF"
opensc-tool -r 'Virtual PCD 00 00' \
  -s '00 A4 00 00 02 3F 00' \
  -s '00 A4 04 00 09 F0 76 69 72 74 63 61 72 64' \
  -s '00 A4 02 0C 02 50 01' \
  -s '00 B0 00 00 20'
echo "== done: the card is removed when virtcard stops"
