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
#   GLOBAL_BATCH  the stage's global batch (default: the published one)
#   PER_DEVICE_BATCH  per-GPU batch (default: the largest <= the stage's default that splits the global
#     batch exactly over the ranks; the rest is gradient accumulation)
#   SAVE_STEPS    save a resumable checkpoint (checkpoint-N in OUTPUT_DIR, the last one kept) every N
#     optimizer steps (default: the stage's published setting; tiny mode: none). Rerunning the same
#     command after a crash resumes from the newest complete checkpoint (docs/llava.md).
# With HOSTFILE, the run's variables (CLIPMOE_*, HF_*, TRANSFORMERS_*, ...) reach every node through a
# DeepSpeed env file of this run that also keeps the lines of the user's .deepspeed_env.
# Each script sets its stage (MODEL, DATA_PATH, ..., GLOBAL_BATCH, DEFAULT_PER_DEVICE, EPOCHS, DEFAULT_SAVE_STEPS)
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
MULTI_NODE=0
if [ -n "$HOSTFILE" ]; then
    [ -f "$HOSTFILE" ] || die "HOSTFILE=$HOSTFILE: no such file (one 'host slots=N' line per node)"
    WORLD_SIZE=$(awk '!/^#/ && NF { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, s, "="); n += s[2] } } END { print n + 0 }' "$HOSTFILE")
    (( WORLD_SIZE > 0 )) || die "HOSTFILE=$HOSTFILE: no 'host slots=N' line"
    LAUNCH=("$DEEPSPEED" --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
    MULTI_NODE=1
else
    WORLD_SIZE=$NUM_GPUS
    LAUNCH=("$DEEPSPEED" --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
fi

# Per-device batch and gradient accumulation from the global batch and the number of ranks:
# global = per_device * ranks * accumulation. Sets PER_DEVICE and ACCUM (no subshell, so that `die`
# stops the script). PER_DEVICE_BATCH set by the user is kept as given; otherwise the largest
# per-device batch <= the stage's default that splits the global batch exactly (less memory per GPU,
# never more than the published setting).
split_batch() {  # global default_per_device
    local global=$1 default=$2 per_rank p
    [[ "$global" =~ ^[1-9][0-9]*$ ]] || die "GLOBAL_BATCH=$global: expected a positive whole number"
    if (( global % WORLD_SIZE )); then
        local near=$(( (global + WORLD_SIZE / 2) / WORLD_SIZE * WORLD_SIZE ))
        (( near > 0 )) || near=$WORLD_SIZE
        die "global batch $global cannot be split over $WORLD_SIZE ranks (nodes x GPUs per node):" \
            "set GLOBAL_BATCH=$near (differs from the published $global) or use a rank count that divides $global"
    fi
    per_rank=$(( global / WORLD_SIZE ))  # samples per rank and optimizer step
    if [ -n "${PER_DEVICE_BATCH:-}" ]; then
        [[ "$PER_DEVICE_BATCH" =~ ^[1-9][0-9]*$ ]] || die "PER_DEVICE_BATCH=$PER_DEVICE_BATCH: expected a positive whole number"
        if (( per_rank % PER_DEVICE_BATCH )); then
            for (( p = PER_DEVICE_BATCH < per_rank ? PER_DEVICE_BATCH : per_rank; per_rank % p; p-- )); do :; done
            die "global batch $global is not a multiple of PER_DEVICE_BATCH=$PER_DEVICE_BATCH x $WORLD_SIZE ranks" \
                "(set PER_DEVICE_BATCH=$p, or unset it to choose one)"
        fi
        PER_DEVICE=$PER_DEVICE_BATCH
    else
        for (( p = default < per_rank ? default : per_rank; per_rank % p; p-- )); do :; done
        PER_DEVICE=$p
    fi
    ACCUM=$(( per_rank / PER_DEVICE ))
}

# Multi-node: DeepSpeed's launcher starts the other nodes' ranks over ssh with only a few variables
# (PYTHON*, NCCL*, ...) plus the lines of its env file ($DS_ENV_FILE, default .deepspeed_env, read
# from ~ and from the current folder). The run's own variables ($CLIPMOE_VISION_TOWER for
# `--vision_tower clipmoe`, Hugging Face cache and offline settings, ...) are written to a file of
# this run: the user's env files first (kept, never modified), then these variables, so they win.
# DS_ENV_FILE names it by absolute path (DeepSpeed joins it to both folders; an absolute path wins).
FORWARD_ENV='^(CLIPMOE_|HF_|HUGGING_FACE_|TRANSFORMERS_|TORCH_|DS_ACCELERATOR$|WANDB_|OMP_NUM_THREADS$|TOKENIZERS_)'
forward_env_to_nodes() {
    local name=${DS_ENV_FILE:-.deepspeed_env} user_files=() f var
    if [[ "$name" = /* ]]; then user_files=("$name"); else user_files=("$HOME/$name" "./$name"); fi
    RUN_ENV_FILE=$(mktemp "${TMPDIR:-/tmp}/clipmoe-deepspeed-env.XXXXXX")
    trap 'rm -f "$RUN_ENV_FILE"' EXIT
    for f in "${user_files[@]}"; do
        if [ -f "$f" ]; then grep -v '^[[:space:]]*$' "$f" >>"$RUN_ENV_FILE" || true; fi
    done
    for var in $(compgen -e); do
        [[ "$var" =~ $FORWARD_ENV ]] || continue
        [[ "${!var}" == *$'\n'* ]] && continue  # one line per variable in DeepSpeed's format
        printf '%s=%s\n' "$var" "${!var}" >>"$RUN_ENV_FILE"
    done
    export DS_ENV_FILE=$RUN_ENV_FILE
}

# Checkpointing: every SAVE_STEPS (else the stage's DEFAULT_SAVE_STEPS; empty: no checkpoints) optimizer
# steps, only the newest kept. Sets SAVE.
save_settings() {  # default_steps
    local steps=${SAVE_STEPS:-$1}
    if [ -z "$steps" ]; then SAVE=(--save_strategy no); return; fi
    [[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "SAVE_STEPS=$steps: expected a positive whole number of optimizer steps"
    SAVE=(--save_strategy steps --save_steps "$steps" --save_total_limit 1)
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
# Reads DATA_PATH, GLOBAL_BATCH, DEFAULT_PER_DEVICE, EPOCHS and DEFAULT_SAVE_STEPS from the calling script.
llava_train() {
    # The caller's arguments name every file and the tower: checked before anything reads them.
    "$PYTHON" -m llava_integration.checks "$@"
    split_batch "$GLOBAL_BATCH" "$DEFAULT_PER_DEVICE"
    save_settings "$DEFAULT_SAVE_STEPS"
    # A plain assignment, not $(...) inside the argument list below: there a failure would be
    # ignored even with set -e and training would start.
    local warmup
    warmup=$(warmup_steps "$DATA_PATH" "$GLOBAL_BATCH" "$EPOCHS" 0.03)
    if [ "$MULTI_NODE" = "1" ]; then forward_env_to_nodes; fi
    local args=(
        --mm_vision_select_layer -2
        --mm_use_im_start_end False
        --mm_use_im_patch_token False
        "${PRECISION[@]}"
        --num_train_epochs "$EPOCHS" "${STEPS[@]}"
        --per_device_train_batch_size "$PER_DEVICE"
        --per_device_eval_batch_size 4
        --gradient_accumulation_steps "$ACCUM"
        "${SAVE[@]}"
        --weight_decay 0.
        --warmup_steps "$warmup"
        --lr_scheduler_type cosine
        --logging_steps 1
        --model_max_length "$LENGTH"
        --gradient_checkpointing True
        --dataloader_num_workers "$WORKERS"
        --lazy_preprocess True
        --report_to "$REPORT"
        "$@"
    )
    # A rerun into an output folder with a checkpoint resumes it: refused here, before the launcher,
    # when the run's inputs or settings changed (llava_integration/resume.py).
    "$PYTHON" -m llava_integration.resume "${args[@]}"
    echo "batch: global $GLOBAL_BATCH = per-device $PER_DEVICE x $WORLD_SIZE ranks x accumulation $ACCUM" >&2
    "${LAUNCH[@]}" --module llava_integration.train "${args[@]}"
}
