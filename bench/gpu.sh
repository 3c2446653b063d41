#!/usr/bin/env bash
# Training throughput and MFU on a CUDA machine (an H200 class GPU), from wheels prepared in advance.
#
#   bench/gpu.sh prepare      here, with PyPI reachable: writes .gpu/ (git-ignored through .git/info/exclude)
#   bench/gpu.sh run [ARGS]   on the GPU machine, in the repo root with .gpu/ beside it
#   bench/gpu.sh args [ARGS]  prints what each bench would get from ARGS, and runs nothing (works on CPU)
#
# ARGS are bench options, each with one value (--rows 64 or --rows=64). Each bench gets the ones its --help
# lists (bench/train_throughput.py takes --setups, bench/cpu_limit.py --tuning, both --rows and --max-steps),
# and an option that no bench lists stops the script before anything runs.
#
# The GPU machine has Python 3.12 with a CUDA torch, transformers and accelerate, and no network, so
# `prepare` downloads the other packages tunelab trains with as wheels for it (the versions installed here;
# bitsandbytes for QLoRA), and copies the alpaca rows and SmolLM2-135M's config and tokenizer. The bundled
# model's GGUF (94 MiB) is bigger than what may travel (64 MiB in all), so `run` builds SmolLM2-135M's
# architecture with random weights: tokens/s and MFU do not depend on the weights' values; the losses then
# mean nothing.
# `run` prints the GPU, then, each step going on if one before it failed:
#   bench/train_throughput.py  plain TRL, tuned TRL, tunelab: real tokens/s, bf16 on
#   bench/cpu_limit.py         tunelab's model FLOP/s over the matmul peak measured in the same process: MFU
#   a QLoRA step               tunelab's SFT with tuning qlora (4-bit base), QLORA_STEPS steps: tokens/s, memory
#   bench/rlhf_throughput.py   plain TRL against tunelab for the RLHF methods, when that bench exists
# With the device tool: run(command="bench/gpu.sh run", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
PACKAGES="trl transformers peft datasets dill multiprocess sqlite-utils sqlite-fts4 click-default-group liger-kernel
          bitsandbytes"
CARRY_LIMIT=$((64 * 1024 * 1024))  # what the device tool carries to the GPU machine, all paths together
QLORA_ROWS=64
QLORA_STEPS=8

usage() {
    echo "bench/gpu.sh: ${1:-}" >&2
    echo "usage: bench/gpu.sh prepare | run [--option value ...] | args [--option value ...]" >&2
    exit 2
}

benches() {
    echo bench/train_throughput.py bench/cpu_limit.py
    if [ -f bench/rlhf_throughput.py ]; then echo bench/rlhf_throughput.py; fi  # written by issue 17's item 1
}

# route ARGS: split them into NAMES/VALUES, read each bench's --help into HELP, and refuse an option no bench lists.
declare -a NAMES VALUES
declare -A HELP
route() {
    NAMES=(); VALUES=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --*=*) NAMES+=("${1%%=*}"); VALUES+=("${1#*=}"); shift ;;
            --?*) [ $# -ge 2 ] || usage "option $1 needs a value"; NAMES+=("$1"); VALUES+=("$2"); shift 2 ;;
            *) usage "unexpected argument '$1'" ;;
        esac
    done
    local bench i known
    for bench in $(benches); do HELP[$bench]=$(python3 "$bench" --help); done
    for i in "${!NAMES[@]}"; do
        known=
        for bench in $(benches); do lists "$bench" "${NAMES[$i]}" && known=1; done
        [ -n "$known" ] || usage "no bench takes ${NAMES[$i]} (they are: $(benches))"
    done
}

lists() {  # lists BENCH OPTION: does BENCH's --help name OPTION?
    grep -qE -- "(^|[][ ,])$2([] =,]|\$)" <<<"${HELP[$1]}"
}

# args_for BENCH: the routed options BENCH takes, in BENCH_ARGS.
args_for() {
    BENCH_ARGS=()
    local i
    for i in "${!NAMES[@]}"; do
        if lists "$1" "${NAMES[$i]}"; then BENCH_ARGS+=("${NAMES[$i]}" "${VALUES[$i]}"); fi
    done
}

prepare() {
    local alpaca=../shared/data/llamafactory/alpaca_en_demo.json
    if [ ! -f "$alpaca" ]; then
        echo "$alpaca: not found; bench/gpu.sh prepare reads third-party data from ../shared/data, which a fresh" \
             "clone lacks; download alpaca_en_demo.json from the data/ folder of" \
             "https://github.com/hiyouga/LLaMA-Factory into ../shared/data/llamafactory" >&2
        exit 2
    fi
    mkdir -p "$GPU/wheels"
    grep -qx "/$GPU/" .git/info/exclude 2>/dev/null || echo "/$GPU/" >> .git/info/exclude
    local pins=()
    for name in $PACKAGES; do
        version=$(python -m pip show "$name" 2>/dev/null | awk "/^Version:/ {print \$2}" || true)
        pins+=("$name${version:+==$version}")
    done
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$GPU/wheels" "${pins[@]}"
    python -m pip wheel -q --no-deps --no-build-isolation -w "$GPU/wheels" .  # tunelab itself (pure Python)
    python - "$GPU" "$alpaca" <<'EOF'
import json, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = json.loads(Path(sys.argv[2]).read_text())[:320]
(out / "alpaca.json").write_text(json.dumps(rows))
model = next(p for p in (Path("data/models/smollm2-135m-instruct"),
                         Path.home() / ".cache/tunelab-tests/models/smollm2-135m-instruct") if (p / "config.json").exists())
(out / "smollm2").mkdir(exist_ok=True)
for f in model.iterdir():
    if f.is_file() and not f.name.endswith(".safetensors"):
        shutil.copy(f, out / "smollm2" / f.name)
EOF
    du -sh "$GPU"
    if [ "$(du -sb "$GPU" | cut -f1)" -gt "$CARRY_LIMIT" ]; then
        echo "warning: $GPU is over the 64 MiB the device tool carries" >&2
    fi
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    route "$@"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
    python3 - "$GPU/smollm2" <<'EOF'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
config = AutoConfig.from_pretrained(sys.argv[1])
AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1])
print(f"random {config.model_type} weights, torch {torch.__version__}, cuda {torch.cuda.is_available()}")
EOF
    local failed=() bench
    for bench in bench/train_throughput.py bench/cpu_limit.py; do
        args_for "$bench"
        python3 "$bench" --model "$GPU/smollm2" --data "$GPU/alpaca.json" "${BENCH_ARGS[@]}" || failed+=("$bench")
    done
    qlora || failed+=("qlora step")
    if [ -f bench/rlhf_throughput.py ]; then
        args_for bench/rlhf_throughput.py
        local model=()
        if lists bench/rlhf_throughput.py --model; then model=(--model "$GPU/smollm2"); fi
        python3 bench/rlhf_throughput.py "${model[@]}" "${BENCH_ARGS[@]}" || failed+=(bench/rlhf_throughput.py)
    fi
    if [ ${#failed[@]} -gt 0 ]; then
        echo "failed: ${failed[*]}" >&2
        exit 1
    fi
}

qlora() {  # one short tunelab SFT run on a 4-bit base, through the entry point the benches use
    echo "--- qlora: $QLORA_STEPS steps on $QLORA_ROWS rows"
    python3 - "$GPU/smollm2" "$GPU/alpaca.json" "$QLORA_ROWS" "$QLORA_STEPS" <<'EOF'
import argparse, json, os, sys, tempfile
from pathlib import Path
model, data, rows, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
home = Path(tempfile.mkdtemp(prefix="tunelab-qlora-"))
os.environ["TUNELAB_HOME"] = str(home)
sys.path.insert(0, "bench")
import torch
from train_throughput import summary, tunelab_setup
torch.cuda.reset_peak_memory_stats()
_, _, probe, _ = tunelab_setup(model, json.loads(data.read_text())[:rows], argparse.Namespace(max_steps=steps), home,
                               tuning="qlora")
r = summary(probe)
print(f"qlora: {r['tokens_per_s']:.1f} real tokens/s over {r['steps']} steps, loss {r['train_loss']:.3f}, "
      f"peak memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
EOF
}

show_args() {  # what `run` would pass each bench
    route "$@"
    local bench
    for bench in $(benches); do
        args_for "$bench"
        echo "$bench ${BENCH_ARGS[*]}"
    done
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    args) shift; show_args "$@" ;;
    *) usage "unknown command '${1:-}'" ;;
esac
