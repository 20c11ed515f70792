#!/usr/bin/env bash
# LLaVA-1.5 stage 1 with a CLIP-MoE tower: projector pretraining on LCS-558K, ZeRO-2.
# Published hyperparameters: lr 1e-3, global batch 256, 1 epoch, warmup 3%, cosine, wd 0, bf16,
# max length 2048, mlp2x_gelu projector, penultimate tower layer. Settings by environment:
#   MODEL (lmsys/vicuna-7b-v1.5)  DATA_PATH  IMAGE_FOLDER  VISION_TOWER (clipmoe: $CLIPMOE_VISION_TOWER)
#   OUTPUT_DIR  PER_DEVICE_BATCH (32)  + the launch settings of common.sh
# Extra arguments are passed on to the trainer (e.g. --mm_vision_moe_tune routers --mm_vision_moe_lr 1e-4).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL=${MODEL:-lmsys/vicuna-7b-v1.5}
DATA_PATH=${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}
VISION_TOWER=${VISION_TOWER:-clipmoe}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-clipmoe-pretrain}
GLOBAL_BATCH=256 PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-32} EPOCHS=1
PRECISION=(--bf16 True --tf32 True) LENGTH=2048 WORKERS=4 STEPS=() SAVE=(--save_strategy steps --save_steps 24000 --save_total_limit 1)
REPORT=${REPORT_TO:-none}

if [ "$TINY" = "1" ]; then  # a few CPU steps on the tiny LLaVA (TINY_* overrides: see common.sh)
    MODEL=${TINY_MODEL:-$TINY_ROOT/llm} DATA_PATH=${TINY_DATA_PATH:-$TINY_ROOT/pretrain.json}
    IMAGE_FOLDER=${TINY_IMAGE_FOLDER:-$TINY_ROOT/images}
    OUTPUT_DIR=${TINY_OUTPUT_DIR:-$TINY_ROOT/checkpoints/llava-tiny-clipmoe-pretrain}
    GLOBAL_BATCH=${TINY_BATCH:-4} PER_DEVICE_BATCH=${TINY_BATCH:-4} PRECISION=(--bf16 False --fp16 False) LENGTH=256 WORKERS=0
    STEPS=(--max_steps ${TINY_STEPS:-3}) SAVE=(--save_strategy no)
fi

"${LAUNCH[@]}" --module llava_integration.train \
    --deepspeed "$SCRIPT_DIR/zero2.json" \
    --model_name_or_path "$MODEL" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    "${PRECISION[@]}" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs $EPOCHS "${STEPS[@]}" \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$(accumulation $GLOBAL_BATCH "$PER_DEVICE_BATCH")" \
    "${SAVE[@]}" \
    --learning_rate 1e-3 \
    --weight_decay 0. \
    --warmup_steps "$(warmup_steps "$DATA_PATH" $GLOBAL_BATCH $EPOCHS 0.03)" \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --model_max_length $LENGTH \
    --gradient_checkpointing True \
    --dataloader_num_workers $WORKERS \
    --lazy_preprocess True \
    --report_to "$REPORT" \
    "$@"
