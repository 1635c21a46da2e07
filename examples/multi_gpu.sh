#!/usr/bin/env bash
# The three training stages and evaluation on all GPUs of one machine, with bf16 mixed precision.
#
#   bash examples/multi_gpu.sh                      # every visible GPU
#   NUM_GPUS=4 SOURCE=synthia bash examples/multi_gpu.sh
#
# --batch-size is per process: with N GPUs each step sees N times the images of one GPU
# (adapt: 2 source + 2 target images per GPU by default). cicld does not rescale --lr or --steps for you.
# Data must be prepared first (see examples/gta5_to_cityscapes.sh or docs/real-data.md).
set -euo pipefail

SOURCE="${SOURCE:-gta5}"
NUM_GPUS="${NUM_GPUS:-$(nvidia-smi --list-gpus | wc -l)}"

# `accelerate launch ... -m cicld.cli STAGE` runs `cicld STAGE` once per GPU.
accelerate launch --num_processes "$NUM_GPUS" -m cicld.cli pretrain-ae  --source "$SOURCE" --mixed-precision bf16
accelerate launch --num_processes "$NUM_GPUS" -m cicld.cli pretrain-ldm --source "$SOURCE" --mixed-precision bf16
accelerate launch --num_processes "$NUM_GPUS" -m cicld.cli adapt        --source "$SOURCE" --mixed-precision bf16

# Evaluation splits the val images over the processes and counts each image once.
accelerate launch --num_processes "$NUM_GPUS" -m cicld.cli evaluate --json "evaluation/$SOURCE-scores.json"
