"""Dummy tokens for the paper's CST: query points placed among the real tokens.

In the published method (de Oliveira Fonseca et al., ICML 2023, Figure 1; METHOD.md) the
network sees the observations together with "dummy" tokens at the coordinates to predict,
whose values start as the linear interpolation of the real tokens along time. These helpers
build that input for modes "paper" and "transformer"; mode "cst" never needs them.

A *series* is what interpolation runs along: one ROI (same id) when ids are given, else one
spatial position (same y, x) when coordinates have space, else the whole sample (a curve).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DummyTokens(NamedTuple):
    """Real tokens followed by dummy tokens: what `CST.forward_tokens` takes in paper mode."""

    values: Tensor  # (B, N + Q, V)
    coords: Tensor  # (B, N + Q, C)
    ids: Tensor | None  # (B, N + Q)
    mask: Tensor | None  # (B, N + Q) True where a token exists; None when all do
    is_real: Tensor  # (B, N + Q) True for the N real tokens


def _same_series(
    coords: Tensor, query_coords: Tensor, ids: Tensor | None, query_ids: Tensor | None
) -> Tensor | None:
    """(B, Q, N) True where query q and token n belong to the same series; None = one series."""
    if ids is not None and query_ids is not None:
        return query_ids[:, :, None] == ids[:, None, :]
    if coords.shape[-1] > 1:
        space, query_space = coords[..., 1:], query_coords[..., 1:]
        return (query_space[:, :, None, :] == space[:, None, :, :]).all(-1)
    return None


def interpolate_in_time(
    values: Tensor,
    coords: Tensor,
    query_coords: Tensor,
    *,
    mask: Tensor | None = None,
    ids: Tensor | None = None,
    query_ids: Tensor | None = None,
) -> Tensor:
    """Linear interpolation along time of each series' real values at the query times.

    Args:
        values: (B, N, V) real token values.
        coords: (B, N, C) real token coordinates; time is coordinate 0.
        query_coords: (B, Q, C) where to interpolate.
        mask: (B, N) True for tokens that exist (padding is False); None when all do.
        ids, query_ids: (B, N), (B, Q) series identities (e.g. ROI index), optional.

    Returns:
        (B, Q, V). Outside a series' observed time span the nearest observation is held
        (as numpy.interp does); a query whose series has no observation gets 0. Memory is
        O(B·Q·N): meant for the paper's token counts, not whole recordings.
    """
    t, query_t = coords[..., 0], query_coords[..., 0]
    dt = t[:, None, :] - query_t[:, :, None]  # (B, Q, N) token time minus query time
    valid = (
        torch.ones_like(dt, dtype=torch.bool) if mask is None else mask[:, None, :].expand_as(dt)
    )
    same = _same_series(coords, query_coords, ids, query_ids)
    if same is not None:
        valid = valid & same
    before, after = valid & (dt <= 0), valid & (dt >= 0)
    left = torch.where(before, dt, -torch.inf).argmax(-1)  # (B, Q) nearest token at or before
    right = torch.where(after, dt, torch.inf).argmin(-1)  # (B, Q) nearest token at or after
    has_left, has_right = before.any(-1), after.any(-1)

    def pick(x: Tensor, index: Tensor) -> Tensor:  # x (B, N, ...) -> (B, Q, ...)
        return x.gather(
            1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        )

    t_left, t_right = pick(t, left), pick(t, right)
    v_left, v_right = pick(values, left), pick(values, right)
    span = t_right - t_left
    weight = torch.where(span > 0, (query_t - t_left) / torch.where(span > 0, span, 1.0), 0.0)
    out = v_left + weight[..., None] * (v_right - v_left)
    out = torch.where(has_right[..., None], out, v_left)  # after the last observation: hold it
    out = torch.where(has_left[..., None], out, v_right)  # before the first: hold it
    return torch.where((has_left | has_right)[..., None], out, torch.zeros_like(out))


def add_dummy_tokens(
    values: Tensor,
    coords: Tensor,
    dummy_coords: Tensor,
    *,
    mask: Tensor | None = None,
    ids: Tensor | None = None,
    dummy_ids: Tensor | None = None,
) -> DummyTokens:
    """Append dummy tokens at `dummy_coords` (B, Q, C), valued by `interpolate_in_time`."""
    if (ids is None) != (dummy_ids is None):
        raise ValueError(
            "ids and dummy_ids go together: pass both (each dummy needs its series' id) or neither"
        )
    dummy_values = interpolate_in_time(
        values, coords, dummy_coords, mask=mask, ids=ids, query_ids=dummy_ids
    )
    B, N, Q = values.shape[0], values.shape[1], dummy_coords.shape[1]
    is_real = torch.cat(
        [
            torch.ones(B, N, dtype=torch.bool, device=values.device),
            torch.zeros(B, Q, dtype=torch.bool, device=values.device),
        ],
        dim=1,
    )
    if mask is not None:
        mask = torch.cat([mask, torch.ones(B, Q, dtype=torch.bool, device=mask.device)], dim=1)
    return DummyTokens(
        values=torch.cat([values, dummy_values], dim=1),
        coords=torch.cat([coords, dummy_coords], dim=1),
        ids=None if ids is None or dummy_ids is None else torch.cat([ids, dummy_ids], dim=1),
        mask=mask,
        is_real=is_real,
    )
