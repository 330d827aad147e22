#!/usr/bin/env bash
# The GPU check: everything frtrain can only measure on a CUDA device, in one run of under 8 minutes on one
# H100/H200, with every result written to $OUT (default: ./device_check_out).
#
#   scripts/device_check.sh                 # on the GPU machine, from a fresh clone
#   scripts/device_check.sh --dry-run       # the same steps at tiny sizes on CPU, CUDA parts skipped (the test suite runs this)
#   scripts/device_check.sh --fetch-wheels  # on a machine with a package registry: put the wheels frtrain needs
#                                           # beyond PyTorch into .whl/ for a GPU machine that cannot download
#
# Steps: 1. install (nothing if frtrain's imports already work; else pip into a private folder, from .whl/ when
# present, with the machine's own PyTorch kept); 2. tests/test_cuda.py (bf16/fp16 autocast, channels_last,
# torch.compile train like fp32); 3. bench_heads on CUDA, plain and chunked, fp32 and bf16 class vectors,
# C = 100k and 1M; 4. bench_train, IResNet-50 at batch 128 in bf16 with and without channels_last and compile;
# 5. bench_eval on CUDA; 6. bench_plan on CUDA: the memory plan against max_memory_allocated. Outputs:
# device_check.log (everything printed), nvidia-smi.txt, tests.txt, bench_heads.json, bench_train.json,
# bench_eval.json, bench_plan_cuda.json and benchmarks.md (the four sections, ready to paste into docs/benchmarks.md). No prompt, no network needed once the wheels are there.
set -euo pipefail

MODE=full
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=wheels ;;
  *) echo "device_check.sh: unknown option '$1' (use --dry-run or --fetch-wheels)" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
# What frtrain needs beyond PyTorch, torchvision, numpy, pillow, OpenCV, scikit-learn, timm, TensorBoard, tqdm,
# matplotlib and pytest (all in a CUDA PyTorch image): Hydra and albumentations with their dependencies.
# (the versions CI tests with)
EXTRA="hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 albumentations==2.0.8 albucore==0.0.24
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2
simsimd==6.5.16 pytest-timeout==2.4.0 webdataset==1.0.2 braceexpand==0.1.7"

if [[ $MODE == wheels ]]; then
  mkdir -p .whl
  # antlr4's runtime is published as a source archive only: build its (pure Python) wheel here.
  "$PY" -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $(echo $EXTRA | tr ' ' '\n' | grep -v antlr4)
  du -sh .whl
  echo "wheels in $ROOT/.whl: carry that folder to the GPU machine beside the clone"
  exit 0
fi

OUT="${OUT:-$ROOT/device_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
step() { printf '\n=== %s  [%s, %ss since start]\n' "$1" "$(date -u +%H:%M:%S)" "$SECONDS"; }

step "install"
if "$PY" -c "import frtrain, hydra, omegaconf, albumentations, timm, pytest, webdataset" 2>/dev/null; then
  echo "frtrain's dependencies are importable with $PY: nothing to install"
else
  SITE="${TMPDIR:-/tmp}/frtrain-device-site"
  if [[ -d .whl ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl
  else
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-deps --upgrade --target "$SITE" $EXTRA
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
  "$PY" -c "import frtrain, hydra, omegaconf, albumentations, timm, pytest, webdataset"
fi
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
EOF
(nvidia-smi || echo "nvidia-smi: not available") > "$OUT/nvidia-smi.txt" 2>&1

if [[ $MODE == dry ]]; then
  DEVICE=cpu
  HEADS_ARGS=(--batch 16 --classes 1000 --heads arcface unpg npt --paths plain chunked
              --class-dtype float32 bfloat16 --repeats 1)
  TRAIN_ARGS=(--models iresnet_tiny --batch 8 --classes 100 --warmup 1 --repeats 1 --variants fp32 bf16)
  EVAL_ARGS=(--models iresnet_tiny --synthetic-pairs 120 --repeats 1 --workers 1)
  PLAN_ARGS=(--device cpu --rows 0)
else
  DEVICE=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check.sh: no CUDA device; use --dry-run on CPU')"
  HEADS_ARGS=(--batch 512 --classes 100000 1000000
              --heads arcface cosface magface unpg npt intraloss ie marginloss adaface curricularface elasticface_arc_plus
              --paths plain chunked --class-dtype float32 bfloat16 --repeats 10)
  TRAIN_ARGS=(--models iresnet50 --batch 128 --warmup 3 --repeats 10
              --variants bf16 bf16+channels_last bf16+compile bf16+channels_last+compile)
  EVAL_ARGS=(--models iresnet18 iresnet50 --repeats 3 --workers 8)
  PLAN_ARGS=(--device cuda --rows 0,3,4,5,8,9,10,11)
fi

status=0
step "tests/test_cuda.py"
# (no CUDA: every test skips, which is what the dry run checks; -rA lists each outcome)
"$PY" -m pytest -q -rA -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt" || status=1

step "bench_heads ($DEVICE)"
"$PY" scripts/bench_heads.py --devices "$DEVICE" "${HEADS_ARGS[@]}" \
  --json "$OUT/bench_heads.json" --markdown "$OUT/benchmarks.md" || status=1

step "bench_train ($DEVICE)"
"$PY" scripts/bench_train.py --devices "$DEVICE" "${TRAIN_ARGS[@]}" \
  --out-json "$OUT/bench_train.json" --out-md "$OUT/benchmarks.md" || status=1

step "bench_eval ($DEVICE)"
"$PY" scripts/bench_eval.py --devices "$DEVICE" "${EVAL_ARGS[@]}" \
  --json "$OUT/bench_eval.json" --markdown "$OUT/benchmarks.md" || status=1

step "bench_plan ($DEVICE)"
"$PY" scripts/bench_plan.py "${PLAN_ARGS[@]}" --out-json "$OUT/bench_plan_cuda.json" --out-md "$OUT/benchmarks.md" \
  || status=1

step "done (status $status); results in $OUT"
ls -l "$OUT"
exit $status
