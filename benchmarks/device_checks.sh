#!/usr/bin/env bash
# Every check that needs a GPU, in one run (for a lent CUDA machine), under 8 minutes: each step has
# its own time limit, so one slow step cannot starve the rest. The GPU tests, then the Function
# benchmark on CUDA (eager / torch.compile / triton / auto, fraction of the copy-bandwidth floor),
# then the batch fits and NCCL. Run from the repository root: bash benchmarks/device_checks.sh
set -u
export PYTHONPATH="$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o addopts="--strict-markers")
# ~2 min: gpu-marked tests, and the Triton kernel tests (on CUDA here: layouts, in-kernel sums, tuner)
timeout 80 "${PYTEST[@]}" tests/test_function.py tests/test_backends.py tests/test_backend_edges.py tests/test_check.py \
  tests/test_fit_solvers.py tests/test_layer.py -m gpu 2>&1 | tail -8
timeout 40 "${PYTEST[@]}" tests/test_triton_kernels.py 2>&1 | tail -5
# ~3 min: float32 at 1e6, 1e7, 1e8 for every case; bf16 and fp16 at 1e7 and 1e8 (the first call of a
# kernel on a size class also tunes its launch: a few compilations, outside the timed runs). One row per
# case is printed as soon as it is measured, so a step cut short by its limit still reports what it did.
BENCH=(python3 benchmarks/bench_function.py --device cuda --budget 0.15 --backends triton auto)
timeout 120 "${BENCH[@]}" --sizes 1e6 1e7 1e8
timeout 60 "${BENCH[@]}" --sizes 1e7 1e8 --dtypes bfloat16 float16 --cases P2 GELU-tanh Mish "per-row Gaussian"
timeout 20 python3 benchmarks/bench_layer.py --device cuda --sizes 4096x256 65536x1024
# ~2.5 min: batch fits on CUDA (the torch engine, and native_lm.c compiled by NVRTC: every curve against
# the CPU engine), then the GPU table (64-point Gaussian float64/float32 at 1e5..1e7, Gpufit's 2D
# Gaussian), sizes cut once one passes 6 s; NCCL last (the limits add up to about 7.7 min in all)
timeout 50 "${PYTEST[@]}" tests/test_fit_batch.py tests/test_cuda_engine.py -m gpu 2>&1 | tail -5
timeout 75 python3 benchmarks/bench_batch.py --device cuda --curves 1000000 --scipy-curves 2000 --gpu-curves 1e5 1e6 1e7
# NCCL: one rank per GPU (NCCL refuses two ranks on one device), the distributed CLI fit against a plain one
python3 - <<'PY'
import numpy as np
x = np.linspace(-3, 3, 200_000); rng = np.random.default_rng(0)
y = 2 * np.exp(-(x - 0.3) ** 2 / 0.5) + 0.1 + 0.01 * rng.standard_normal(x.size)
np.savetxt("/tmp/cg_nccl.csv", np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
PY
FIT=(fit --data /tmp/cg_nccl.csv --model "a*exp(-(x-m)**2/(2*s**2)) + c" --x x --y y --param a=1 --param m=0 --param s=1 --param c=0 --quiet)
timeout 30 torchrun --nproc-per-node "$(nvidia-smi -L | wc -l)" -m customgrad "${FIT[@]}" --distributed --json /tmp/cg_nccl.json 2>&1 | tail -3
timeout 15 python3 -m customgrad "${FIT[@]}" --json /tmp/cg_plain.json 2>&1 | tail -3
python3 -c "
import json; a, b = (json.load(open(f'/tmp/cg_{n}.json'))['params'] for n in ('nccl', 'plain'))
print('NCCL vs one process, max rel. diff:', max(abs(a[k] - b[k]) / abs(b[k]) for k in b))"
