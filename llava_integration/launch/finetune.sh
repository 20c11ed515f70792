#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with a CLIP-MoE tower: visual instruction tuning on mix665k, ZeRO-3.
# Published hyperparameters: lr 2e-5, global batch 128, 1 epoch, warmup 3%, cosine, wd 0, bf16,
# max length 2048, pad aspect ratio, group_by_modality_length, gradient checkpointing. Settings:
#   MODEL (lmsys/vicuna-7b-v1.5)  DATA_PATH  IMAGE_FOLDER  VISION_TOWER (clipmoe)
#   PRETRAIN_DIR (stage-1 output, holds mm_projector.bin; "none" when MODEL is already a LLaVA checkpoint)
#   OUTPUT_DIR (name must contain "llava")
#   SAVE_STEPS (50000)  PER_DEVICE_BATCH (default <= 16, see common.sh)  GLOBAL_BATCH (128)  + the launch settings of common.sh
# Extra arguments are passed on to the trainer (e.g. --mm_vision_moe_tune routers --mm_vision_moe_lr 2e-5).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL=${MODEL:-lmsys/vicuna-7b-v1.5}
DATA_PATH=${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-./playground/data}
VISION_TOWER=${VISION_TOWER:-clipmoe}
PRETRAIN_DIR=${PRETRAIN_DIR:-./checkpoints/llava-v1.5-7b-clipmoe-pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-clipmoe}
GLOBAL_BATCH=${GLOBAL_BATCH:-128} DEFAULT_PER_DEVICE=16 EPOCHS=1
DEFAULT_SAVE_STEPS=50000  # SAVE_STEPS overrides (common.sh)

if [ "$TINY" = "1" ]; then  # a few CPU steps on the tiny LLaVA (TINY_* overrides: see common.sh)
    MODEL=${TINY_MODEL:-$TINY_ROOT/llm} DATA_PATH=${TINY_DATA_PATH:-$TINY_ROOT/finetune.json}
    IMAGE_FOLDER=${TINY_IMAGE_FOLDER:-$TINY_ROOT/images}
    PRETRAIN_DIR=${PRETRAIN_DIR_TINY:-$TINY_ROOT/checkpoints/llava-tiny-clipmoe-pretrain}
    OUTPUT_DIR=${TINY_OUTPUT_DIR:-$TINY_ROOT/checkpoints/llava-tiny-clipmoe-finetune}
    GLOBAL_BATCH=${TINY_BATCH:-4} DEFAULT_PER_DEVICE=${TINY_BATCH:-4} DEFAULT_SAVE_STEPS=
fi

ADAPTER=(--pretrain_mm_mlp_adapter "$PRETRAIN_DIR/mm_projector.bin")
if [ "$PRETRAIN_DIR" = "none" ]; then ADAPTER=(); fi

llava_train \
    --deepspeed "$SCRIPT_DIR/zero3.json" \
    --model_name_or_path "$MODEL" \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    "${ADAPTER[@]}" \
    --mm_projector_type mlp2x_gelu \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --output_dir "$OUTPUT_DIR" \
    --learning_rate 2e-5 \
    "$@"
