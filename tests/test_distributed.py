"""What several processes tell each other: `everywhere` is an AND across them, `sum_everywhere` a
sum, `broadcast_text` the main process's text."""

from __future__ import annotations

import os
import sys
import textwrap

import torch
from accelerate import Accelerator

from cicld.distributed import broadcast_text, everywhere, sum_everywhere

from conftest import REPO, free_port, run_or_show_where_it_hangs


def test_one_process_answers_for_itself():
    accelerator = Accelerator(cpu=True)
    assert everywhere(accelerator, True) is True
    assert everywhere(accelerator, False) is False
    assert sum_everywhere(accelerator, torch.tensor([1, 2])).tolist() == [1, 2]
    assert broadcast_text(accelerator, "runs/adapt/toy-1") == "runs/adapt/toy-1"


def test_two_processes_agree_sum_and_hear_the_main_process(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys

            import torch
            from accelerate import Accelerator
            from cicld.distributed import broadcast_text, everywhere, sum_everywhere

            accelerator = Accelerator(cpu=True)
            rank = accelerator.process_index
            answers = [
                everywhere(accelerator, True),
                everywhere(accelerator, rank == 0),  # true in one process only
                everywhere(accelerator, torch.tensor(rank == 1)),
                everywhere(accelerator, False),
                sum_everywhere(accelerator, torch.tensor([1, rank])).tolist(),
                sum_everywhere(accelerator, torch.tensor([1, rank])).tolist(),  # its buffer, reused
                broadcast_text(accelerator, "runs/adapt/tøy-1" if rank == 0 else None),
            ]
            with open(f"{sys.argv[1]}/answers-{rank}.txt", "w") as file:  # not stdout: two would interleave
                file.write(repr(answers))
            accelerator.end_training()
            """
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = run_or_show_where_it_hangs([*command, str(script), str(tmp_path)], env, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    answers = "[True, False, False, False, [2, 1], [2, 1], 'runs/adapt/tøy-1']"
    assert [(tmp_path / f"answers-{rank}.txt").read_text() for rank in (0, 1)] == [answers, answers]
