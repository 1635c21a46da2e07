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
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    return key_problems(missing, unexpected, mismatched)


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """One phrase per kind of problem, naming its first three keys."""
    labelled = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
    return [f"{len(keys)} {label}: {_first_keys(keys)}" for label, keys in labelled if keys]


def _first_keys(keys: list[str]) -> str:
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{', '.join(keys[:3])}{more}"


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str) -> None:
    problems = state_dict_problems(expected, given)
    if problems:
        raise CicldError(f"{what} do not fit the model: {'; '.join(problems)}")


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, raising :class:`CicldError` on any key problem
    or a NaN or infinite weight. Every model and checkpoint cicld loads comes through here, so a
    model that diverged (or a damaged file) is never scored, used or trained from."""
    check_state_dict(module.state_dict(), state, what)
    non_finite = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if non_finite:
        raise CicldError(
            f"{what} hold NaN or infinite values ({_first_keys(non_finite)}): "
            "the model diverged or the file is damaged; cicld does not load it"
        )
    module.load_state_dict(state, strict=True)
