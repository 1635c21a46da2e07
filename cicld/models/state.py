"""Strict state-dict checks that fail with one readable line instead of a torch traceback."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from cicld.errors import CicldError


def state_dict_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and shape-mismatched keys, each summarised by its first three keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in given and given[k].shape != v.shape
    ]
    return key_problems(missing, unexpected, mismatched)


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """One phrase per kind of problem, naming its first three keys."""
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    return problems


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str) -> None:
    problems = state_dict_problems(expected, given)
    if problems:
        raise CicldError(f"{what} do not fit the model: {'; '.join(problems)}")


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, raising :class:`CicldError` on any key problem."""
    check_state_dict(module.state_dict(), state, what)
    module.load_state_dict(state, strict=True)
