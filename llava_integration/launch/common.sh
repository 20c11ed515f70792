# Shared by pretrain.sh and finetune.sh (sourced, not run).
# Launch settings (environment variables):
#   NUM_GPUS      GPUs per node (default 8)          HOSTFILE     DeepSpeed hostfile for multi-node (default: single node)
#   MASTER_PORT   rendezvous port (default 29500)   PYTHON       interpreter of the environment (default: python)
#   CLIPMOE_LLAVA_TINY=1   a few fp32 CPU steps on a tiny LLaVA (CI): TINY_ROOT is a folder laid out as
#     `python -m clipmoe_demo.tiny_llava DIR` writes it (llm/, clipmoe-tower/, images/, pretrain.json,
#     finetune.json); the caller builds it, these scripts only read it.
#     tiny-mode overrides (default: the tiny world under TINY_ROOT): TINY_MODEL (LLM or LLaVA checkpoint),
#     TINY_DATA_PATH, TINY_IMAGE_FOLDER, TINY_OUTPUT_DIR, TINY_BATCH (per device = global, default 4),
#     TINY_STEPS (--max_steps, default 3), PRETRAIN_DIR_TINY (finetune.sh: stage-1 output or "none")
#   REPORT_TO     --report_to (default none)
# Each script sets its stage (MODEL, DATA_PATH, ..., GLOBAL_BATCH, PER_DEVICE_BATCH, EPOCHS, SAVE)
# and calls llava_train with its stage flags.
# A bad setting or argument stops the script with one `error:` line and exit code 2 before the
# launcher starts (the arguments are checked by `python -m llava_integration.checks`).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {  # one error line, exit 2
    echo "error: $*" >&2
    exit 2
}

PYTHON=${PYTHON:-python}
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: no such interpreter (set PYTHON to the environment's python)"
DEEPSPEED=${DEEPSPEED:-$(dirname "$(command -v "$PYTHON")")/deepspeed}
[ -x "$DEEPSPEED" ] || DEEPSPEED=deepspeed
command -v "$DEEPSPEED" >/dev/null || die "DEEPSPEED=$DEEPSPEED: the DeepSpeed launcher is not installed (pip install deepspeed)"
TINY=${CLIPMOE_LLAVA_TINY:-0}
NUM_GPUS=${NUM_GPUS:-8}
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=${HOSTFILE:-}
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS=$NUM_GPUS: expected a positive whole number of GPUs per node"
[[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || die "MASTER_PORT=$MASTER_PORT: expected a port number"

if [ "$TINY" = "1" ]; then
    TINY_ROOT=${TINY_ROOT:-${TMPDIR:-/tmp}/clipmoe-tiny-llava}
    # A caller that brings its own LLM and data (TINY_MODEL + TINY_DATA_PATH) needs no tiny world.
    if { [ -z "${TINY_MODEL:-}" ] || [ -z "${TINY_DATA_PATH:-}" ]; } && [ ! -f "$TINY_ROOT/finetune.json" ]; then
        die "CLIPMOE_LLAVA_TINY=1: TINY_ROOT=$TINY_ROOT holds no tiny LLaVA world (finetune.json);" \
            "build one with 'python -m clipmoe_demo.tiny_llava $TINY_ROOT', or set TINY_MODEL and TINY_DATA_PATH"
    fi
    export CLIPMOE_VISION_TOWER=${CLIPMOE_VISION_TOWER:-$TINY_ROOT/clipmoe-tower}
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
    NUM_GPUS=1
    HOSTFILE=
fi

# Settings both stages share: the published ones, or a few fp32 CPU steps on the tiny LLaVA.
REPORT=${REPORT_TO:-none}
if [ "$TINY" = "1" ]; then
    PRECISION=(--bf16 False --fp16 False) LENGTH=256 WORKERS=0 STEPS=(--max_steps "${TINY_STEPS:-3}")
else
    PRECISION=(--bf16 True --tf32 True) LENGTH=2048 WORKERS=4 STEPS=()
fi

# Number of ranks: the hostfile's slots, else NUM_GPUS on this node.
if [ -n "$HOSTFILE" ]; then
    [ -f "$HOSTFILE" ] || die "HOSTFILE=$HOSTFILE: no such file (one 'host slots=N' line per node)"
    WORLD_SIZE=$(awk '!/^#/ && NF { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, s, "="); n += s[2] } } END { print n + 0 }' "$HOSTFILE")
    (( WORLD_SIZE > 0 )) || die "HOSTFILE=$HOSTFILE: no 'host slots=N' line"
    LAUNCH=("$DEEPSPEED" --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
else
    WORLD_SIZE=$NUM_GPUS
    LAUNCH=("$DEEPSPEED" --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
fi

# gradient accumulation that keeps the published global batch: global = per_device * ranks * accumulation
accumulation() {  # global per_device
    local per_rank=$(( $2 * WORLD_SIZE ))
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "PER_DEVICE_BATCH=$2: expected a positive whole number"
    if (( $1 % per_rank )); then
        die "global batch $1 is not a multiple of per-device batch $2 x $WORLD_SIZE ranks (set PER_DEVICE_BATCH)"
    fi
    echo $(( $1 / per_rank ))
}

# warmup ratio as steps (--warmup_ratio is gone from transformers 5; steps work everywhere)
warmup_steps() {  # data_json global_batch epochs ratio
    "$PYTHON" - "$@" <<'PY'
import json, math, sys
path, batch, epochs, ratio = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
with open(path) as f:
    n = len(json.load(f))
print(math.ceil(ratio * math.ceil(math.ceil(n / batch) * epochs)))
PY
}

# Launch llava_integration.train with the trainer flags both stages share, then the caller's
# arguments (stage flags, then the user's extras), so that for a repeated flag the caller's wins.
# Reads DATA_PATH, GLOBAL_BATCH, PER_DEVICE_BATCH, EPOCHS and SAVE from the calling script.
llava_train() {
    # The caller's arguments name every file and the tower: checked before anything reads them.
    "$PYTHON" -m llava_integration.checks "$@"
    # Plain assignments, not $(...) inside the argument list below: there a failure (accumulation
    # exits 2 on a bad batch split) would be ignored even with set -e and training would start.
    local accum warmup
    accum=$(accumulation "$GLOBAL_BATCH" "$PER_DEVICE_BATCH")
    warmup=$(warmup_steps "$DATA_PATH" "$GLOBAL_BATCH" "$EPOCHS" 0.03)
    "${LAUNCH[@]}" --module llava_integration.train \
        --mm_vision_select_layer -2 \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        "${PRECISION[@]}" \
        --num_train_epochs "$EPOCHS" "${STEPS[@]}" \
        --per_device_train_batch_size "$PER_DEVICE_BATCH" \
        --per_device_eval_batch_size 4 \
        --gradient_accumulation_steps "$accum" \
        "${SAVE[@]}" \
        --weight_decay 0. \
        --warmup_steps "$warmup" \
        --lr_scheduler_type cosine \
        --logging_steps 1 \
        --model_max_length "$LENGTH" \
        --gradient_checkpointing True \
        --dataloader_num_workers "$WORKERS" \
        --lazy_preprocess True \
        --report_to "$REPORT" \
        "$@"
}
