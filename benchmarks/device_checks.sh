#!/usr/bin/env bash
# Every check that needs a GPU, in one run (for a lent CUDA machine): the GPU tests, then the
# Function benchmark on CUDA. Run from the repository root: bash benchmarks/device_checks.sh
set -u
export PYTHONPATH="$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
python3 -m pytest tests/test_function.py tests/test_backends.py tests/test_check.py tests/test_fit_solvers.py tests/test_layer.py -m gpu -q -p no:cacheprovider \
  -o addopts="--strict-markers" 2>&1 | tail -15
python3 benchmarks/bench_function.py --device cuda --sizes 1e6 1e7 1e8 --backends eager compile triton auto
python3 benchmarks/bench_function.py --device cuda --sizes 1e7 --dtype bfloat16 --backends eager triton
python3 benchmarks/bench_layer.py --device cuda --sizes 4096x256 65536x1024
python3 -m pytest tests/test_fit_batch.py tests/test_cuda_engine.py -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" 2>&1 | tail -8
# the torch engine and the GPU native engine (native_lm.c by NVRTC) at 1e6 curves, then the GPU table
# (64-point Gaussian float64/float32 at 1e5..1e7, Gpufit's 2D Gaussian), sizes cut once one passes 6 s
timeout 300 python3 benchmarks/bench_batch.py --device cuda --curves 1000000 --scipy-curves 2000 --gpu-curves 1e5 1e6 1e7
# NCCL: one rank per GPU (NCCL refuses two ranks on one device), the distributed CLI fit against a plain one
python3 - <<'PY'
import numpy as np
x = np.linspace(-3, 3, 200_000); rng = np.random.default_rng(0)
y = 2 * np.exp(-(x - 0.3) ** 2 / 0.5) + 0.1 + 0.01 * rng.standard_normal(x.size)
np.savetxt("/tmp/cg_nccl.csv", np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
PY
FIT=(fit --data /tmp/cg_nccl.csv --model "a*exp(-(x-m)**2/(2*s**2)) + c" --x x --y y --param a=1 --param m=0 --param s=1 --param c=0 --quiet)
timeout 300 torchrun --nproc-per-node "$(nvidia-smi -L | wc -l)" -m customgrad "${FIT[@]}" --distributed --json /tmp/cg_nccl.json 2>&1 | tail -3
python3 -m customgrad "${FIT[@]}" --json /tmp/cg_plain.json 2>&1 | tail -3
python3 -c "
import json; a, b = (json.load(open(f'/tmp/cg_{n}.json'))['params'] for n in ('nccl', 'plain'))
print('NCCL vs one process, max rel. diff:', max(abs(a[k] - b[k]) / abs(b[k]) for k in b))"
