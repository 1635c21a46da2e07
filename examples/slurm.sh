#!/usr/bin/env bash
# cicld adapt (change the stage in the last line) on several machines of a Slurm cluster:
# one torchrun per node, one process per GPU.
#
#   sbatch examples/slurm.sh                                   # adapt --source gta5 on 2 nodes x 4 GPUs
#   SOURCE=synthia sbatch --nodes 4 examples/slurm.sh
#   RESUME=latest sbatch examples/slurm.sh                     # after a time limit: continue the newest run
#
# Every node must see the same data/ and runs/ (a shared file system): the first process writes
# the run folder and its checkpoints, and every process reads the checkpoint it resumes from.
# --batch-size is per process (docs/gpu-training.md); cicld does not rescale --lr or --steps.
#
#SBATCH --job-name=cicld
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

SOURCE="${SOURCE:-gta5}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-29500}"
# A resumed run keeps the settings saved with it: it takes --resume (and --source for 'latest') only.
FLAGS=(--source "$SOURCE" --mixed-precision bf16)
if [ -n "${RESUME:-}" ]; then FLAGS=(--resume "$RESUME" --source "$SOURCE"); fi

# srun starts torchrun once per node; each starts one process per GPU, and all of them meet at the
# first node (torchrun's c10d rendezvous numbers the nodes itself: no --node_rank to work out).
srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m cicld.cli adapt "${FLAGS[@]}"
