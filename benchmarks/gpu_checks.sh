#!/usr/bin/env bash
# The GPU parts of the test suite and of the benchmarks, in one run on a CUDA machine
# (about 4 minutes on an H200 before the pixel paths were added to bench_extract, which now takes up to 7; 10 with
# --all).
#
#     bash benchmarks/gpu_checks.sh            # logs under ./gpu-checks (or $OUT when set)
#     bash benchmarks/gpu_checks.sh --all      # also bench_probes on the GPU (against scikit-learn on the CPUs)
#
# Each step has its own time limit and writes its own log, so a step that runs long or fails leaves the others'
# figures. Run from the repository root with probe importable (installed, or this checkout on PYTHONPATH).
# Wheels in ./.whl (packages the machine lacks and cannot download) are installed to /tmp/site first.
set -u
out=${OUT:-gpu-checks}
mkdir -p "$out"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 HF_HUB_OFFLINE=1

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "== $name (limit ${limit} s): $*"
    # each line stamped with the time it was printed; at the limit SIGABRT makes Python dump every thread's stack
    timeout -s ABRT -k 10 "$limit" "$@" 2>&1 | while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done \
        >"$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    tail -n 25 "$out/$name.txt"
    echo "== $name: rc=$rc in $((SECONDS - begin)) s"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    lscpu | grep -m1 "Model name"
    echo "cores: $(nproc)"
    $py -c "import torch, timm, h5py, polars; print('torch', torch.__version__, 'timm', timm.__version__, 'h5py', \
h5py.__version__, 'polars', polars.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/machine.txt"

step gpu_tests 100 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_probes.py
# issue 25's table, both pixel paths side by side (the PIL path is the baseline): ViT-B/16 at 224, bf16, batch 256
# over 4,096 ImageNet-sized JPEGs it writes itself (extraction / bare forward on device-resident input), BiT-R101x3
# at 448 (random init), the time to the first forward and each stage's share of the wall time, the agreement of the
# two paths; then ViT-B/16's bare forward under torch.compile
step bench_extract 420 $py benchmarks/bench_extract.py --gpu-models --repeats 2
step bench_finetune 60 $py benchmarks/bench_finetune.py --skip-cpu
[ "${1:-}" = "--all" ] && step bench_probes 240 $py benchmarks/bench_probes.py --device cuda --repeats 1 --pause 0.5
exit 0
