#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a fixed time.
#
#   scripts/fuzz.sh [SECONDS]          every target, SECONDS each (default 10),
#                                      two at a time, corpus in a temp dir
#   scripts/fuzz.sh --long [SECONDS] [TARGET...]
#                                      long runs (default 3600 s each) that keep
#                                      their corpus in fuzz/corpus/TARGET
#   scripts/fuzz.sh --build            only build
#
# Only the stable toolchain is needed: the targets are built with the same
# SanitizerCoverage instrumentation cargo-fuzz uses, minus AddressSanitizer
# (which needs -Zsanitizer; every crate fuzzed here forbids unsafe code).
# The crate keeps cargo-fuzz's layout; see docs/FUZZING.md for cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

long=0
build_only=0
case "${1:-}" in
    --long) long=1; shift ;;
    --build) build_only=1; shift ;;
esac
secs=${1:-}
if [[ -z "$secs" ]]; then
    if ((long)); then secs=3600; else secs=10; fi
else
    shift
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
# --target keeps build scripts and proc macros uninstrumented.
echo "== building fuzz targets"
cargo build --quiet --release --manifest-path fuzz/Cargo.toml \
    --target "$triple" --bins
bin="$CARGO_TARGET_DIR/$triple/release"
((build_only)) && exit 0

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^virtcard-fuzz$')
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Card directories the targets make for themselves go away with the run.
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"

# Runs one target; prints "target execs crashes".
run_one() {
    local t=$1 corpus log
    if ((long)); then corpus="$root/fuzz/corpus/$t"; else corpus="$work/corpus-$t"; fi
    mkdir -p "$corpus" "$root/fuzz/artifacts/$t"
    log="$work/$t.log"
    local seeds=()
    [[ -d "$root/fuzz/seeds/$t" ]] && seeds=("$root/fuzz/seeds/$t")
    local rc=0
    "$bin/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$root/fuzz/artifacts/$t/" \
        "$corpus" "${seeds[@]}" >"$log" 2>&1 || rc=$?
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if ((rc != 0)); then
        echo "$t ${execs:-0} FAILED (exit $rc)"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 | sed 's/^/    /'
    else
        echo "$t ${execs:-0} ok"
    fi
}

echo "== fuzzing ${#targets[@]} targets, ${secs}s each"
# Two at a time: the machines have two cores.
i=0
for t in "${targets[@]}"; do
    run_one "$t" >"$work/$t.result" &
    i=$((i + 1))
    if ((i % 2 == 0)); then wait; fi
done
wait
failed=0
for t in "${targets[@]}"; do
    read -r name execs verdict rest <"$work/$t.result"
    printf '  %-16s %12s execs  %s %s\n' "$name" "$execs" "$verdict" "$rest"
    tail -n +2 "$work/$t.result"
    [[ "$verdict" == ok ]] || failed=$((failed + 1))
done
echo "fuzz: $((${#targets[@]} - failed)) passed, $failed failed"
((failed == 0))
