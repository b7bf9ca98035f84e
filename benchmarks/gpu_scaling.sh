#!/usr/bin/env bash
# GPU scaling of one evaluation with torchrun: the CIFAR-10 example entry
# (submissions/cifar10-autoattack-resnet18, every stage) at world size 1 and at all visible GPUs.
#
#   benchmarks/gpu_scaling.sh                      # the 100 bundled CIFAR-10 test images
#   DATA_DIR=/data benchmarks/gpu_scaling.sh       # CIFAR-10 in torchvision's layout: N=1000 by default
#   N=2000 BATCH=125 STAGES=clean,autoattack DATA_DIR=/data benchmarks/gpu_scaling.sh
#
# Prints the wall time of each run and the speed-up, and whether the two records agree example by
# example (on a GPU, nondeterministic kernels may flip a borderline point; on CPU they always agree).
# The work is cut into blocks of BATCH examples (default: N / (4 x GPUs), so every GPU gets several
# blocks); both runs use the same N and BATCH, as the record depends on them. Each run starts from an
# empty state folder. Exits 1 without a CUDA device.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUB="$ROOT/submissions/cifar10-autoattack-resnet18/submission.yaml"
PY="${PYTHON:-python}"

NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
if [ "$NGPU" -lt 1 ]; then
    echo "error: no CUDA device is visible (torch.cuda.device_count() = 0); this benchmark needs GPUs" >&2
    exit 1
fi

DATA_ARGS=()
if [ -n "${DATA_DIR:-}" ]; then
    DATA_ARGS=(--data-dir "$DATA_DIR")
    N="${N:-1000}"
else
    N="${N:-100}"  # only the first 100 CIFAR-10 test images are bundled
fi
BATCH="${BATCH:-$(( N / (4 * NGPU) > 0 ? N / (4 * NGPU) : 1 ))}"
STAGES="${STAGES:-clean,flops,certify,autoattack,diagnostics}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "cifar10-autoattack-resnet18: $N examples in blocks of $BATCH, stages $STAGES, $NGPU GPU(s): $("$PY" -c \
    'import torch; print(torch.cuda.get_device_name(0))')"

run() {  # run WORLD_SIZE: prints the wall time in seconds
    local ws="$1"
    local t0 t1
    t0="$(date +%s.%N)"
    if ! "$PY" -m torch.distributed.run --standalone --nproc-per-node "$ws" -m harness eval "$SUB" \
            --device cuda --n-examples "$N" --batch-size "$BATCH" --only "$STAGES" ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
            --no-progress --out "$WORK/ws$ws/rec.json" > "$WORK/ws$ws.log" 2>&1; then
        echo "error: the run at world size $ws failed; its output:" >&2
        tail -n 40 "$WORK/ws$ws.log" >&2
        exit 1
    fi
    t1="$(date +%s.%N)"
    "$PY" -c "print(f'{$t1 - $t0:.1f}')"
}

T1="$(run 1)"
echo "world size 1: $T1 s"
if [ "$NGPU" -gt 1 ]; then
    TN="$(run "$NGPU")"
    echo "world size $NGPU: $TN s"
    "$PY" -c "print(f'speed-up at world size $NGPU: {$T1 / $TN:.2f}x (ideal {$NGPU}x)')"
    "$PY" - "$WORK/ws1/rec.examples.npz" "$WORK/ws$NGPU/rec.examples.npz" <<'EOF'
import sys
import numpy as np

a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
differ = [k for k in a.files if k not in b.files or a[k].tobytes() != b[k].tobytes()]
print("per-example arrays identical at both world sizes" if not differ else f"arrays that differ: {differ}")
EOF
else
    echo "only one GPU is visible: nothing to compare world size 1 with"
fi
