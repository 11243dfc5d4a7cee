#!/usr/bin/env bash
# The GPU figures of docs/benchmarks and the CUDA checks, in one run on a lent GPU machine (one
# call: starting a machine costs minutes). Each part has its own time limit and log, in priority
# order, so a slow part cannot starve the rest:
#   bash benchmarks/gpu_figures.sh [OUT]      # logs and JSON in OUT (default $OUT or gpu-figures)
# It needs the project's dependencies importable (python -m pip install -e . on a connected
# machine; on an offline one, wheels and PYTHONPATH=. as the session notes say).
set -uo pipefail
out=$(realpath -m "${1:-${OUT:-gpu-figures}}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" >> "$out/gpu.txt"

part() {  # part NAME SECONDS COMMAND...: run in benchmarks/, log to OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    (cd benchmarks && timeout "$limit" "$@") > "$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
}

part pretrain 120 python bench_pretrain.py --device cuda --amp bf16 --channels-last --batch-size 16 \
    --warmup 2 --steps 5 --profile --json "$out/pretrain.json"
part detector 45 python bench_detector.py --device cuda --amp bf16 --repeats 10
part detector-fp32 45 python bench_detector.py --device cuda --amp off --repeats 5
part finetune 90 python bench_finetune.py --device cuda --amp bf16 --warmup 2 --steps 5 --json "$out/finetune.json"
part cuda-tests 120 python -m pytest -q -p no:cacheprovider ../tests/test_devices.py ../tests/test_region_encoder.py
tail -n 3 "$out"/*.log
