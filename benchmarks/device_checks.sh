#!/usr/bin/env bash
# Every check that needs a GPU, in one run (for a lent CUDA machine): the GPU tests, then the
# Function benchmark on CUDA. Run from the repository root: bash benchmarks/device_checks.sh
set -u
export PYTHONPATH="$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
python3 -m pytest tests/test_function.py tests/test_backends.py tests/test_check.py tests/test_fit_solvers.py -m gpu -q -p no:cacheprovider \
  -o addopts="--strict-markers" 2>&1 | tail -15
python3 benchmarks/bench_function.py --device cuda --sizes 1e6 1e7 1e8 --backends eager compile triton auto
python3 benchmarks/bench_function.py --device cuda --sizes 1e7 --dtype bfloat16 --backends eager triton
python3 -m pytest tests/test_fit_batch.py -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" 2>&1 | tail -5
python3 benchmarks/bench_batch.py --device cuda --curves 1000000 --scipy-curves 2000
