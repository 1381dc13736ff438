#!/usr/bin/env bash
# The GPU parts of the test suite and of the benchmarks, in one run on a CUDA machine
# (about 4 minutes on an H200 before the pixel paths were added to bench_extract, which now takes up to 7, and the
# agreement, --reuse-pixels and --compile steps up to 4 more; 14 with --all: where one call may run 10 minutes, run
# the steps in two calls with --only).
#
#     bash benchmarks/gpu_checks.sh            # logs under ./gpu-checks (or $OUT when set)
#     bash benchmarks/gpu_checks.sh --all      # also bench_probes on the GPU (against scikit-learn on the CPUs)
#     bash benchmarks/gpu_checks.sh --dry-run  # any machine: print each step, check every script starts (--help)
#     bash benchmarks/gpu_checks.sh --only bench_agreement,bench_extract_reuse_compile   # some steps (names below)
#
# Issue 25's figures, each beside its baseline measured in the same run and the device's name: (1) ViT-B/16 at 224,
# bf16, batch 256, 4,096 ImageNet-sized JPEGs, extraction / bare forward on device-resident input ("(c) / (a)"), per
# pixel path; (2) BiT-R101x3 at 448, the same ratio; (3) the time to the first forward and the build's share;
# then the agreement of the two paths (pooled-feature cosine, logistic top-1 with the paired interval), --compile
# (bare forward and extraction) and --reuse-pixels (extraction writing and reading the pixel store).
#
# Each step has its own time limit and writes its own log, so a step that runs long or fails leaves the others'
# figures. Run from the repository root with probe importable (installed, or this checkout on PYTHONPATH).
# Wheels in ./.whl (packages the machine lacks and cannot download) are installed to /tmp/site first.
set -u
dry=0
all=0
only=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1 ;;
        --all) all=1 ;;
        --only) shift; only=",${1:-},"; [ "$only" = ",," ] && { echo "gpu_checks.sh: --only needs step names" >&2; exit 2; } ;;
        *) echo "gpu_checks.sh: unknown option $1 (use --all, --dry-run, --only STEP[,STEP])" >&2; exit 2 ;;
    esac
    shift
done
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
    if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then
        return
    fi
    if [ "$dry" = 1 ]; then  # the command as it would run; its script must at least start and parse --help
        echo "== $name (limit ${limit} s): $*"
        if [ "$2" != "-m" ]; then
            "$1" "$2" --help >/dev/null 2>"$out/$name.help.txt" && echo "   $2 --help: ok" \
                || { echo "   $2 --help FAILED:"; tail -n 5 "$out/$name.help.txt"; }
        fi
        return
    fi
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
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi here"
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
# the tensor path (nvJPEG) against timm's PIL transform on the same JPEGs: per-image cosine of the pooled features,
# a logistic probe's test top-1 on each and the paired bootstrap interval of the difference
step bench_agreement 90 $py benchmarks/bench_agreement.py --device cuda
# --reuse-pixels (the first backbone writes the pixel store, a later one reads it) and --compile, each against the
# plain extraction in the same run
step bench_extract_reuse_compile 150 $py benchmarks/bench_extract.py --model vit_base_patch16_224 --images 1024 \
    --batch-size 256 --device cuda --repeats 1 --reuse --compile
step bench_finetune 60 $py benchmarks/bench_finetune.py --skip-cpu
[ "$all" = 1 ] && step bench_probes 240 $py benchmarks/bench_probes.py --device cuda --repeats 1 --pause 0.5
exit 0
