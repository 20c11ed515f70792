#!/usr/bin/env bash
# CLIP-MoE by Diversified Multiplet Upcycling on ShareGPT4V, from openai/clip-vit-large-patch14-336,
# with the paper's / official code's hyperparameters: 4 experts, top-2, 3 MCL stages of 1 epoch,
# 3x3 k-means clusters per stage, global batch 800 (8 GPUs x 100), AdamW lr 1e-5 wd 0.2 for the
# FFNs, 200 warmup steps + cosine, label smoothing 0.1, logit scale fixed at 100, 248 text
# positions (Long-CLIP stretch), router stage 1 epoch with load balancing 0.01 and expert dropout
# 0.1. Deliberate differences: router lr 1e-3 (the official 1e-6 leaves routers at random),
# bf16 instead of fp16 AMP, a seeded sampler shared by all ranks.
#
# One node, 8 GPUs:   DATA=data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json scripts/dmu/dmu_sharegpt4v_8gpu.sh
#                     (ShareGPT4V's layout: images under data/coco, data/sam, data/llava, ...; IMAGE_ROOT otherwise)
# Several nodes:      run the same command on every node with NNODES, NODE_RANK (0 on the node of MASTER_ADDR),
#                     MASTER_ADDR (an address of node 0 the others reach), MASTER_PORT set, e.g. on 2 nodes:
#                       node-1: NNODES=2 NODE_RANK=0 MASTER_ADDR=node-1 DATA=... scripts/dmu/dmu_sharegpt4v_8gpu.sh
#                       node-2: NNODES=2 NODE_RANK=1 MASTER_ADDR=node-1 DATA=... scripts/dmu/dmu_sharegpt4v_8gpu.sh
#                     (torchrun, or accelerate with its torchrun launcher: static rendezvous, no ssh between nodes);
#                     OUT and BASE must be on a filesystem every node sees (checkpoints, features, labels live there).
# DeepSpeed ZeRO-2:   LAUNCHER=accelerate (uses scripts/dmu/accelerate_deepspeed_zero2.yaml, or ACCELERATE_CONFIG).
# Rerunning the same command resumes where the run stopped. Extra arguments go to `clipmoe dmu run`.
# The baselines of the paper's table, same data and budget:  SUBCOMMAND="baseline --kind direct-ft" (or upcycling).
set -euo pipefail

DATA=${DATA:?set DATA to the ShareGPT4V json (hold out your validation records first)}
# IMAGE_ROOT: the folder the JSON's image paths start from. Default: `clipmoe dmu`'s own (the JSON's
# folder if the first image is there, else its parent: ShareGPT4V's layout, data/sharegpt4v/*.json
# with "coco/train2017/x.jpg" under data/).
IMAGE_ROOT=${IMAGE_ROOT:-}
OUT=${OUT:-runs/dmu-sharegpt4v-l14-336}
BASE=${BASE:-checkpoints/clip-vit-large-patch14-336-248}
NPROC=${NPROC:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
LAUNCHER=${LAUNCHER:-torchrun}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-$(dirname "$0")/accelerate_deepspeed_zero2.yaml}
SUBCOMMAND=${SUBCOMMAND:-run}
PYTHON=${PYTHON:-python}
ACCELERATE=${ACCELERATE:-accelerate}
for var in NPROC NNODES; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $var=${!var}: expected a positive whole number" >&2; exit 2; }
done
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && (( NODE_RANK < NNODES )) || {
  echo "error: NODE_RANK=$NODE_RANK: expected 0 .. NNODES-1 ($((NNODES - 1)))" >&2; exit 2; }

# The dense base: OpenAI's 336-px L/14 with the text positions stretched 77 -> 248 (node 0 writes it).
if [ "$NODE_RANK" = 0 ] && [ ! -f "$BASE/config.json" ]; then
  "$PYTHON" -m clipmoe_encoder.cli dmu prepare-base --model openai/clip-vit-large-patch14-336 --text-positions 248 --out "$BASE"
fi
until [ -f "$BASE/config.json" ]; do sleep 10; done

ROOT_ARGS=()
if [ -n "$IMAGE_ROOT" ]; then ROOT_ARGS=(--image-root "$IMAGE_ROOT"); fi
ARGS=(dmu $SUBCOMMAND --base "$BASE" --data "$DATA" "${ROOT_ARGS[@]}" --out "$OUT"
  --num-experts 4 --top-k 2 --clusters-per-modality 3 --mcl-epochs 1 --router-epochs 1
  --batch-size 800 --lr-mcl 1e-5 --wd-mcl 0.2 --warmup-steps 200
  --lr-router 1e-3 --wd-router 0.01 --router-trains router --lb-coef 0.01 --z-coef 0 --expert-dropout 0.1
  --label-smoothing 0.1 --logit-scale 100 --mcl-towers both --small-clusters drop
  --save-every 200 --num-workers 8 --feature-batch-size 1024 --mixed-precision bf16 "$@")

if [ "$LAUNCHER" = accelerate ]; then
  exec "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
    --num_processes $((NPROC * NNODES)) --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    -m clipmoe_encoder.cli "${ARGS[@]}"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" --rdzv_backend static \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m clipmoe_encoder.cli "${ARGS[@]}"
