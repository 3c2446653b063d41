#!/usr/bin/env bash
# LoRA SFT throughput and MFU on a CUDA machine (an H200 class GPU), from wheels prepared in advance.
#
#   bench/gpu.sh prepare      here, with PyPI reachable: writes .gpu/ (git-ignored through .git/info/exclude)
#   bench/gpu.sh run [ARGS]   on the GPU machine, in the repo root with .gpu/ beside it; ARGS go to both benches
#
# The GPU machine has Python 3.12 with a CUDA torch, transformers and accelerate, and no network, so
# `prepare` downloads the other packages tunelab trains with as wheels for it (the versions installed here),
# and copies the alpaca rows and SmolLM2-135M's config and tokenizer. The bundled model's GGUF (94 MiB) is
# bigger than what may travel (64 MiB in all), so `run` builds SmolLM2-135M's architecture with random
# weights: tokens/s and MFU do not depend on the weights' values; the losses then mean nothing.
# `run` prints the GPU, then bench/train_throughput.py (plain TRL, tuned TRL, tunelab: real tokens/s, bf16 on)
# and bench/cpu_limit.py (tunelab's model FLOP/s over the bf16 matmul peak measured in the same process: MFU).
# With the device tool: run(command="bench/gpu.sh run", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
PACKAGES="trl transformers peft datasets dill multiprocess sqlite-utils sqlite-fts4 click-default-group liger-kernel"

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
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$GPU/wheels" "${pins[@]}"
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
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 - "$GPU/smollm2" <<'EOF'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
config = AutoConfig.from_pretrained(sys.argv[1])
AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1])
print(f"random {config.model_type} weights, torch {torch.__version__}, cuda {torch.cuda.is_available()}")
EOF
    python3 bench/train_throughput.py --model "$GPU/smollm2" --data "$GPU/alpaca.json" "$@"
    python3 bench/cpu_limit.py --model "$GPU/smollm2" --data "$GPU/alpaca.json" "$@"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bench/gpu.sh prepare | run [bench args]" >&2; exit 2 ;;
esac
