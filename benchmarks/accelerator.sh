#!/usr/bin/env bash
# The one command of an accelerator run: bash benchmarks/accelerator.sh [accelerator.py flags]
# It prints the device checks (benchmarks/checks.py, the functions that
# tests/test_on_accelerator.py asserts; no pytest needed here) and every figure.
#
# The device image has jax, flax, optax, orbax and torch but not ml_collections,
# which xydiff.configs needs: benchmarks/fetch_accelerator_wheels.sh downloads
# it into .whl/ beforehand, and it is installed here into /tmp/site (no index,
# no dependencies, nothing compiled). The working tree goes on PYTHONPATH as
# it is; xydiff.configs comes with the working tree. Compiled
# programs are cached in /tmp, so a rerun on a still-warm machine skips the
# compiles. The JSON lines also go to $OUT/accelerator.jsonl when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."

shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "accelerator.sh: no wheels in .whl/ (benchmarks/fetch_accelerator_wheels.sh)" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/xydiff-jax-cache}"

if [[ -n "${OUT:-}" ]]; then
  python3 benchmarks/accelerator.py "$@" | tee "$OUT/accelerator.jsonl"
else
  python3 benchmarks/accelerator.py "$@"
fi
