#!/usr/bin/env bash
# CI: build the cargo-fuzz targets (fuzz/, docs/fuzzing.md) and run each briefly from its
# committed seeds; a crash, a failed assertion, a timeout or running out of memory fails.
# On stable Rust: no sanitizer (`-s none` asks rustc for no unstable flag), with debug
# assertions and overflow checks on. FUZZ_SECONDS sets the time per target (default 15).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds_per_target="${FUZZ_SECONDS:-15}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/keyledger-target}"
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "ci: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  # In a folder of its own: the shared target folder is for the project's builds.
  env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz --version "=$CARGO_FUZZ_VERSION" ||
    { echo "ci: cannot install cargo-fuzz (cargo install cargo-fuzz@$CARGO_FUZZ_VERSION failed)" >&2; exit 1; }
fi

# The fuzz project is a workspace of its own: the main workspace's fmt and clippy skip it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings

# Instrumented builds take flags no other build uses; a folder of their own keeps them
# from invalidating the main builds and the other way round.
build_flags=(--sanitizer none --debug-assertions --target-dir "$CARGO_TARGET_DIR/fuzz")
cargo fuzz build "${build_flags[@]}"

# libFuzzer adds what it finds to the first corpus folder: a scratch one, so the
# committed seeds stay as written.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
passed=0
for target in $(cargo fuzz list); do
  echo "ci: fuzzing $target for ${seconds_per_target}s"
  options=(-max_total_time="$seconds_per_target" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [ -f "fuzz/dicts/$target.dict" ]; then options+=(-dict="fuzz/dicts/$target.dict"); fi
  corpora=("$scratch/$target")
  if [ -d "fuzz/corpus/$target" ]; then corpora+=("fuzz/corpus/$target"); fi
  mkdir -p "$scratch/$target"
  if ! cargo fuzz run "${build_flags[@]}" "$target" "${corpora[@]}" -- "${options[@]}" \
    >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "ci: fuzz target $target failed; the input is under fuzz/artifacts/$target/ (docs/fuzzing.md: reproducing)" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" || true
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
