#!/usr/bin/env bash
# LLaVA-1.5 stage 1 with a CLIP-MoE tower: projector pretraining on LCS-558K, ZeRO-2.
# Published hyperparameters: lr 1e-3, global batch 256, 1 epoch, warmup 3%, cosine, wd 0, bf16,
# max length 2048, mlp2x_gelu projector, penultimate tower layer. Settings by environment:
#   MODEL (lmsys/vicuna-7b-v1.5)  DATA_PATH  IMAGE_FOLDER  VISION_TOWER (clipmoe: $CLIPMOE_VISION_TOWER)
#   OUTPUT_DIR  SAVE_STEPS (24000)  PER_DEVICE_BATCH (default <= 32, see common.sh)  GLOBAL_BATCH (256)  + the launch settings of common.sh
# Extra arguments are passed on to the trainer (e.g. --mm_vision_moe_tune routers --mm_vision_moe_lr 1e-4).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL=${MODEL:-lmsys/vicuna-7b-v1.5}
DATA_PATH=${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}
VISION_TOWER=${VISION_TOWER:-clipmoe}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-clipmoe-pretrain}
GLOBAL_BATCH=${GLOBAL_BATCH:-256} DEFAULT_PER_DEVICE=32 EPOCHS=1
DEFAULT_SAVE_STEPS=24000  # SAVE_STEPS overrides (common.sh)

if [ "$TINY" = "1" ]; then  # a few CPU steps on the tiny LLaVA (TINY_* overrides: see common.sh)
    MODEL=${TINY_MODEL:-$TINY_ROOT/llm} DATA_PATH=${TINY_DATA_PATH:-$TINY_ROOT/pretrain.json}
    IMAGE_FOLDER=${TINY_IMAGE_FOLDER:-$TINY_ROOT/images}
    OUTPUT_DIR=${TINY_OUTPUT_DIR:-$TINY_ROOT/checkpoints/llava-tiny-clipmoe-pretrain}
    GLOBAL_BATCH=${TINY_BATCH:-4} DEFAULT_PER_DEVICE=${TINY_BATCH:-4} DEFAULT_SAVE_STEPS=
fi

llava_train \
    --deepspeed "$SCRIPT_DIR/zero2.json" \
    --model_name_or_path "$MODEL" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --output_dir "$OUTPUT_DIR" \
    --learning_rate 1e-3 \
    "$@"
