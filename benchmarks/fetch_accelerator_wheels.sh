#!/usr/bin/env bash
# Downloads into .whl/ the wheels benchmarks/accelerator.sh installs on the device image.
#
# The image (Python 3.12; jax, flax, optax, orbax, tensorboard, torch, opencv,
# Pillow, scikit-image; no network) lacks ml_collections (the configs) and grain
# with the two small packages it needs beside what the image has (the training
# input pipeline); absl-py, etils, protobuf and PyYAML are there. About 6 MiB
# in all. .whl/ is git-ignored: carry it to the device machine explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl/*.whl
du -ch .whl/*.whl | tail -1
