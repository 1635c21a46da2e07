#!/usr/bin/env bash
# The whole real-data pipeline on one GPU: prepare GTA5 and Cityscapes, train the three stages,
# evaluate on Cityscapes val, segment a few val images. Run it from the folder that holds data/.
#
#   bash examples/gta5_to_cityscapes.sh
#   SOURCE=synthia bash examples/gta5_to_cityscapes.sh       # SYNTHIA -> Cityscapes (mIoU16/13)
#
# Expects data/gta5 (or data/synthia) and data/cityscapes as described in docs/real-data.md.
# Every stage can be stopped and resumed: re-run the stage's command with --resume latest.
set -euo pipefail

SOURCE="${SOURCE:-gta5}"          # gta5 or synthia
WORKERS="${WORKERS:-8}"           # processes for prepare-data
PRECISION="${PRECISION:-bf16}"    # no, fp16 or bf16 (mixed precision for training)

# 1. Data: trainId labels and class statistics, once (re-runs skip what is done).
cicld prepare-data "$SOURCE" -j "$WORKERS"
cicld prepare-data cityscapes -j "$WORKERS"

# 2. Training: each stage starts from the newest finished run of the stage before it.
cicld pretrain-ae  --source "$SOURCE" --mixed-precision "$PRECISION"
cicld pretrain-ldm --source "$SOURCE" --mixed-precision "$PRECISION"
cicld adapt        --source "$SOURCE" --mixed-precision "$PRECISION"    # -> runs/latest

# 3. Scores on Cityscapes val (mIoU19, mIoU16, mIoU13) and pictures in evaluation/.
cicld evaluate --json "evaluation/$SOURCE-scores.json"

# 4. Label maps, colour maps and overlays for one val city (lindau, 59 images).
cicld predict data/cityscapes/leftImg8bit/val/lindau "predictions/$SOURCE"
