#!/usr/bin/env bash
# The prepared GPU check: what a lent GPU machine runs, in under 8 minutes, to measure the local backend where it
# is meant to run (a large model in 4-bit NF4 on one GPU) and to prove its memory handling for real.
#
#   1. build a random 7B Llama (bf16 safetensors, the tiny tokenizer) and a LoRA adapter with random weights;
#   2. bench_backend.py on it in NF4 with the adapter active: sequential vs batched vs `medjp eval`, and the 5-shot
#      shared-prefix rows (5)-(6);
#   3. a forced out-of-memory check: a batch too big on purpose must be split and every prompt answered;
#   4. a 20-step QLoRA training run (`medjp train`);
#   5. one JSON file with every step's results (default gpu_check.json).
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--out FILE] [--work DIR]
#   --dry-run  the same steps end to end on CPU with a small random model (minutes on 2 cores): checks the script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="gpu_check.json"
work=""
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    --work) work="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$work" ]]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/medjp-gpu-check.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MEDJP_HOME="$work/home" DSPY_CACHEDIR="$work/home/dspy"

if [[ $dry == 1 ]]; then
  size=dry; device=cpu
  bench=(--questions 8 --questions-5shot 8 --new-tokens 8 --repeats 1 --torch-threads 2 --dtype float32)
  train=(--compute-dtype float32 --no-gradient-checkpointing --batch-size 2 --grad-accum 1 --max-length 256)
else
  size=7b; device=cuda
  python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --dry-run")'
  bench=(--questions 32 --questions-5shot 16 --new-tokens 32 --repeats 1 --torch-threads 8 --device-map cuda)
  train=(--batch-size 4 --grad-accum 1 --max-length 1024)
fi

step() {  # step NAME COMMAND...: run, time, and stop the whole check on failure
  local name="$1"; shift
  echo "== $name" >&2
  local start=$SECONDS
  "$@"
  echo "{\"seconds\": $((SECONDS - start))}" > "$work/$name.time.json"
}

step build python "$here/gpu_check.py" build "$work" --size "$size" --device "$device" --json "$work/build.json"
step bench python "$here/bench_backend.py" --model "$work/model" --load-in-4bit --adapter "lora=$work/adapter" \
  --skip-100m --no-vllm "${bench[@]}" --json "$work/bench.json"
step oom python "$here/gpu_check.py" oom "$work" --device "$device" --json "$work/oom.json"
step train medjp train --model "$work/model" --max-steps 20 --save-steps 20 --logging-steps 5 --warmup-ratio 0 \
  --validation-fraction 0 "${train[@]}" --out "$work/train"
python - "$work/train/metrics.jsonl" "$work/train.json" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
losses = [r["loss"] for r in rows if "loss" in r]
json.dump({"steps": max((r.get("step", 0) for r in rows), default=0), "first_loss": losses[0] if losses else None,
           "last_loss": losses[-1] if losses else None}, open(sys.argv[2], "w", encoding="utf-8"))
EOF

python "$here/gpu_check.py" report --out "$out" --parts "$work"/{build,bench,oom,train}.json "$work"/*.time.json
python - "$out" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
ok = bool(r["oom"] and r["oom"]["ok"] and r["train"] and r["train"]["steps"] >= 20 and r["bench"])
print(f"gpu_check on {r['device']}: {'passed' if ok else 'FAILED'} -> {sys.argv[1]}")
sys.exit(0 if ok else 1)
EOF
