#!/usr/bin/env bash
# Prepare the LLaVA-1.5 evaluation data layout that `python -m eval_mllm run --data-root DIR`
# reads (docs/eval.md, section 1) from the public downloads.
#
#   scripts/eval/prepare_data.sh DIR                      # everything (~40 GB)
#   BENCHMARKS="pope mmbench" scripts/eval/prepare_data.sh DIR
#   DRY_RUN=1 scripts/eval/prepare_data.sh DIR            # only print what would be fetched where
#
# Every download is printed (URL -> target) before it starts; files already present are kept, so
# the script can be rerun after an interruption. Not run in CI.
#
# Sources that are not plain URLs:
#   * LLaVA's eval.zip (question files) is on Google Drive (LLaVA docs/Evaluation.md): needs
#     `pip install gdown`, or download it yourself and set EVAL_ZIP=/path/to/eval.zip.
#   * The MME release is given out by its authors on request (BradyFU/Awesome-Multimodal-Large-
#     Language-Models, branch Evaluation): set MME_ZIP=/path/to/MME_Benchmark_release_version.zip.
set -euo pipefail

DATA=${1:?usage: $0 DATA_DIR   (env: BENCHMARKS, DRY_RUN, EVAL_ZIP, MME_ZIP)}
BENCHMARKS=${BENCHMARKS:-"pope mme textvqa gqa scienceqa mmbench vqav2 vizwiz mmvet"}
DRY_RUN=${DRY_RUN:-0}

EVAL_ZIP_GDRIVE_ID=${EVAL_ZIP_GDRIVE_ID:-1atZSBBrAX54yYpxtVVW33zFvcnaHeFPy}
POPE_COMMIT=${POPE_COMMIT:-e3e39262c85a6a83f26cf5094022a782cb0df58d}
COCO=http://images.cocodataset.org/zips
TEXTVQA=https://dl.fbaipublicfiles.com/textvqa
GQA=https://downloads.cs.stanford.edu/nlp/data/gqa
SQA_RAW=https://raw.githubusercontent.com/lupantech/ScienceQA/main/data/scienceqa
SQA_IMAGES=https://scienceqa.s3.us-west-1.amazonaws.com/images/test.zip
MMBENCH=https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_20230712.tsv
VIZWIZ=https://vizwiz.cs.colorado.edu/VizWiz_final/images/test.zip
MMVET=https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip

say() { printf '%s\n' "$*"; }
run() { if [ "$DRY_RUN" = 1 ]; then say "  (dry run) $*"; else "$@"; fi; }

# fetch URL TARGET: download unless TARGET exists (wget -c resumes a partial file). Each download
# shows a progress bar (size, rate, time left): some archives are tens of GB.
fetch() {
  local url=$1 target=$2
  if [ -s "$target" ]; then say "have      $target"; return; fi
  say "download  $url -> $target"
  run mkdir -p "$(dirname "$target")"
  if command -v wget >/dev/null; then run wget -q --show-progress --progress=bar:force:noscroll -c -O "$target.part" "$url"
  else run curl -fL --progress-bar -C - -o "$target.part" "$url"; fi
  run mv "$target.part" "$target"
}

# unpack ZIP DIR MARKER: unzip into DIR unless MARKER (a path the archive creates) exists.
unpack() {
  local zip=$1 dir=$2 marker=$3
  if [ -e "$marker" ]; then say "have      $marker"; return; fi
  say "unpack    $zip -> $dir"
  run mkdir -p "$dir"
  run unzip -q -o "$zip" -d "$dir"
}

DL="$DATA/_downloads"
say "data root: $DATA  (downloads kept in $DL)"
run mkdir -p "$DATA" "$DL"

# LLaVA's question files (eval.zip holds <benchmark>/<question file>, possibly under a top folder).
if [ -n "${EVAL_ZIP:-}" ]; then
  say "using     $EVAL_ZIP (EVAL_ZIP)"
else
  EVAL_ZIP="$DL/eval.zip"
  if [ ! -s "$EVAL_ZIP" ]; then
    say "download  https://drive.google.com/uc?id=$EVAL_ZIP_GDRIVE_ID (LLaVA eval.zip) -> $EVAL_ZIP"
    if [ "$DRY_RUN" = 1 ]; then say "  (dry run) gdown"
    elif command -v gdown >/dev/null; then gdown -O "$EVAL_ZIP" "$EVAL_ZIP_GDRIVE_ID"
    else say "error: install gdown or download eval.zip by hand and set EVAL_ZIP"; exit 1; fi
  fi
fi
unpack "$EVAL_ZIP" "$DL/eval_zip" "$DL/eval_zip"
# llava_eval_file SUBDIR FILE: copy one question file from eval.zip into the layout.
llava_eval_file() {
  local src
  src=$(find "$DL/eval_zip" -path "*/$1/$2" 2>/dev/null | head -n 1 || true)
  src=${src:-"$DL/eval_zip/.../$1/$2"}
  say "copy      $src -> $DATA/$1/$2"
  run mkdir -p "$DATA/$1"
  run cp -n "$src" "$DATA/$1/$2"
}

for bench in $BENCHMARKS; do
  say "== $bench"
  case $bench in
    pope)
      llava_eval_file pope llava_pope_test.jsonl
      for split in adversarial popular random; do
        fetch "https://raw.githubusercontent.com/AoiDragon/POPE/$POPE_COMMIT/output/coco/coco_pope_$split.json" \
              "$DATA/pope/coco/coco_pope_$split.json"
      done
      fetch "$COCO/val2014.zip" "$DL/val2014.zip"
      unpack "$DL/val2014.zip" "$DATA/pope" "$DATA/pope/val2014" ;;
    mme)
      llava_eval_file MME llava_mme.jsonl
      if [ -z "${MME_ZIP:-}" ]; then
        say "skip      MME images: set MME_ZIP to the MME release zip (given out by the MME authors)"
      else
        unpack "$MME_ZIP" "$DATA/MME" "$DATA/MME/MME_Benchmark_release_version"
      fi ;;
    textvqa)
      llava_eval_file textvqa llava_textvqa_val_v051_ocr.jsonl
      fetch "$TEXTVQA/data/TextVQA_0.5.1_val.json" "$DATA/textvqa/TextVQA_0.5.1_val.json"
      fetch "$TEXTVQA/images/train_val_images.zip" "$DL/textvqa_train_val_images.zip"
      unpack "$DL/textvqa_train_val_images.zip" "$DATA/textvqa" "$DATA/textvqa/train_images" ;;
    gqa)
      llava_eval_file gqa llava_gqa_testdev_balanced.jsonl
      fetch "$GQA/questions1.2.zip" "$DL/gqa_questions1.2.zip"
      if [ ! -e "$DATA/gqa/testdev_balanced_questions.json" ]; then
        say "unpack    $DL/gqa_questions1.2.zip (testdev_balanced_questions.json) -> $DATA/gqa/testdev_balanced_questions.json"
        run unzip -q -o -j "$DL/gqa_questions1.2.zip" testdev_balanced_questions.json -d "$DATA/gqa"
      fi
      fetch "$GQA/images.zip" "$DL/gqa_images.zip"
      unpack "$DL/gqa_images.zip" "$DATA/gqa" "$DATA/gqa/images" ;;
    scienceqa)
      llava_eval_file scienceqa llava_test_CQM-A.json
      fetch "$SQA_RAW/problems.json" "$DATA/scienceqa/problems.json"
      fetch "$SQA_RAW/pid_splits.json" "$DATA/scienceqa/pid_splits.json"
      fetch "$SQA_IMAGES" "$DL/scienceqa_test.zip"
      unpack "$DL/scienceqa_test.zip" "$DATA/scienceqa/images" "$DATA/scienceqa/images/test" ;;
    mmbench)
      fetch "$MMBENCH" "$DATA/mmbench/mmbench_dev_20230712.tsv" ;;
    vqav2)
      llava_eval_file vqav2 llava_vqav2_mscoco_test-dev2015.jsonl
      fetch "$COCO/test2015.zip" "$DL/test2015.zip"
      unpack "$DL/test2015.zip" "$DATA/vqav2" "$DATA/vqav2/test2015" ;;
    vizwiz)
      llava_eval_file vizwiz llava_test.jsonl
      fetch "$VIZWIZ" "$DL/vizwiz_test.zip"
      unpack "$DL/vizwiz_test.zip" "$DATA/vizwiz" "$DATA/vizwiz/test" ;;
    mmvet)
      llava_eval_file mm-vet llava-mm-vet.jsonl
      fetch "$MMVET" "$DL/mm-vet.zip"
      unpack "$DL/mm-vet.zip" "$DL" "$DL/mm-vet"
      if [ ! -e "$DATA/mm-vet/images" ]; then
        say "copy      $DL/mm-vet/images -> $DATA/mm-vet/images"
        run mkdir -p "$DATA/mm-vet"
        run cp -r "$DL/mm-vet/images" "$DATA/mm-vet/images"
      fi ;;
    *) say "error: unknown benchmark '$bench'"; exit 2 ;;
  esac
done
say "done: python -m eval_mllm run --model CKPT --benchmarks ${BENCHMARKS// /,} --data-root $DATA --out OUT"
