"""Index machinery of the CST decoder: each query reading the tokens of its own channel.

With latents and channel identities, a query also attends to the raw tokens of its own
channel (a ROI, a patch) in the window. `channel_table` groups a window's tokens by
channel once (at encode), `TokenCache` holds them with each decoder layer's keys and
values, and `ChannelGroups` arranges a batch of queries so that own-channel attention is
one batched matmul per layer. `by_query` looks up a per-channel table for every query.
None of this has learnable parameters; `cst.py` holds the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn


def channel_table(ids: Tensor, mask: Tensor | None, n_ids: int) -> tuple[Tensor, Tensor]:
    """Token indices grouped by channel: (B, n_ids, M) indices and validity, M = max count."""
    B, N = ids.shape
    group = ids if mask is None else torch.where(mask, ids, n_ids)  # padding: an extra group
    position = torch.arange(N, device=ids.device)
    order = (group * N + position).argsort(-1)  # by channel, then by position
    sorted_group = group.gather(1, order)
    counts = torch.zeros(B, n_ids + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    starts = counts.cumsum(1) - counts
    rank = position - starts.gather(1, sorted_group)
    # M is data-dependent; on the meta device (no data) every token could share a channel
    M = N if ids.device.type == "meta" else max(1, int(counts[:, :n_ids].max()))
    dump = (n_ids + 1) * M  # a slot for padding beyond M, dropped below
    slot = torch.where(rank < M, sorted_group * M + rank, dump)
    table = torch.zeros(B, dump + 1, dtype=torch.long, device=ids.device)
    table.scatter_(1, slot, order)
    valid = torch.zeros(B, dump + 1, dtype=torch.bool, device=ids.device)
    valid.scatter_(1, slot, torch.ones_like(slot, dtype=torch.bool))
    table, valid = table[:, :dump].view(B, n_ids + 1, M), valid[:, :dump].view(B, n_ids + 1, M)
    return table[:, :n_ids], valid[:, :n_ids]


def by_query(t: Tensor, ids: Tensor) -> Tensor:
    """Rows of a per-channel table (Bt, n_ids, ...), Bt ∈ {1, B}, for ids (B, Q): (B, Q, ...)."""
    B, Q = ids.shape
    if t.shape[0] == 1:
        return t[0].index_select(0, ids.reshape(-1)).view(B, Q, *t.shape[2:])
    offset = torch.arange(B, device=ids.device)[:, None] * t.shape[1]
    flat = t.reshape(B * t.shape[1], *t.shape[2:])
    return flat.index_select(0, (ids + offset).reshape(-1)).view(B, Q, *t.shape[2:])


@dataclass
class TokenCache:
    """The observed tokens of a window grouped by channel, for each query's own channel.

    Arranged once per window (at encode), so that a decode reads each channel's keys in
    place (`ChannelGroups`).
    """

    kv: list[tuple[Tensor, Tensor]]  # per decoder layer, keys and values (H, B·n_ids, M, D/H)
    coords: Tensor  # (B, n_ids, M, C)
    valid: Tensor  # (B, n_ids, M) which entries are real tokens
    values: Tensor  # (B, n_ids, M, V) the observed values (for the interpolant)

    @classmethod
    def by_channel(
        cls,
        tokens: Tensor,
        coords: Tensor,
        values: Tensor,
        table: Tensor,
        valid: Tensor,
        projections: list[nn.Linear],
        n_heads: int,
    ) -> TokenCache:
        """Group tokens (B, N, D), coords (B, N, C) and values (B, N, V) by a channel table
        (B, n_ids, M), then project each decoder layer's keys and values: the tokens are
        gathered once, not the keys and values of every layer."""
        (B, N, D), (_, n_ids, M) = tokens.shape, table.shape
        batch = torch.arange(B, device=table.device)[:, None, None]
        grouped = tokens.reshape(B * N, D).index_select(0, (table + batch * N).reshape(-1))
        kv = []
        for proj in projections:  # (B·n_ids·M, 2D) -> keys, values (H, B·n_ids, M, D/H)
            k, v = proj(grouped).view(B * n_ids, M, 2, n_heads, -1).permute(2, 3, 0, 1, 4)
            kv.append((k.contiguous(), v.contiguous()))
        return cls(kv, coords[batch, table], valid, values[batch, table])

    def to(self, dtype: torch.dtype) -> TokenCache:
        kv = [(k.to(dtype), v.to(dtype)) for k, v in self.kv]
        return replace(self, kv=kv, coords=self.coords.to(dtype), values=self.values.to(dtype))


@dataclass
class ChannelGroups:
    """Queries grouped by the cache row (window and channel) whose own keys they read.

    Own-channel attention then costs one batched matmul per layer, (S·(K+1), hd) @ (hd, M)
    for each group of S query slots and each head: gathering M keys for every query instead
    would copy, and in training scatter back, Q·M·D numbers per layer, more than all the
    layer's matmuls cost. When the spare slots of one group per cache row cost less than
    gathering the used rows' keys (a spare slot costs about a query, a gathered row about M),
    every row is a group and the keys are read in place. Otherwise (one long trace among
    single queries) the used rows are gathered; S is then the largest count, or the mean if
    that would leave most slots spare, and a row with more queries fills several groups.
    """

    rows: Tensor | None  # (G,) cache row of each group, flat over (window, channel); None = all
    members: Tensor  # (G·S,) query (flat over B·Q) in each group slot; spare slots read query 0
    slots: Tensor  # (B·Q,) each query's slot
    size: int  # S
    in_order: bool = False  # members are 0, 1, ..., B·Q - 1: queries come grouped already

    @classmethod
    def of(cls, ids: Tensor, cache_batch: int, n_ids: int, row_tokens: int) -> ChannelGroups:
        """Groups for query identities (B, Q) against a cache of `cache_batch` windows whose
        rows hold `row_tokens` (M) tokens each."""
        B, Q = ids.shape
        if cache_batch > 1:
            ids = ids + torch.arange(B, device=ids.device)[:, None] * n_ids
        flat, position = ids.reshape(-1), torch.arange(B * Q, device=ids.device)
        if ids.device.type == "meta":  # no data to group by: a group per query
            return cls(flat, position, position, 1)
        n_rows = cache_batch * n_ids
        counts = torch.bincount(flat, minlength=n_rows)
        size, used = int(counts.max()), int(torch.count_nonzero(counts))
        rows: Tensor | None = None
        if n_rows * size - B * Q <= used * row_tokens:  # every row a group: keys in place
            row, chunks = flat, torch.ones_like(counts)
        else:
            in_use, row, counts = torch.unique(flat, return_inverse=True, return_counts=True)
            if used * size > 2 * B * Q:
                size = -(-B * Q // used)
            chunks = -(-counts // size)  # groups per row in use
            rows = in_use.repeat_interleave(chunks)
        first_group = chunks.cumsum(0) - chunks
        order = torch.argsort(row, stable=True)
        rank = torch.empty_like(order)
        rank[order] = position - (counts.cumsum(0) - counts)[row[order]]  # among the row's
        slots = (first_group[row] + rank // size) * size + rank % size
        members = torch.zeros(int(chunks.sum()) * size, dtype=torch.long, device=ids.device)
        members[slots] = position
        in_order = members.shape == position.shape and bool(torch.equal(members, position))
        return cls(rows, members, slots, size, in_order)

    def group_rows(self, n_rows: int) -> Tensor:
        """(G,) the cache row of each group, out of `n_rows` (all rows when `rows` is None)."""
        if self.rows is not None:
            return self.rows
        return torch.arange(n_rows, device=self.members.device)

    def arrange(self, t: Tensor) -> Tensor:
        """Per-query (B, Q, ...) -> per group slot (G, S, ...): each group a batch row."""
        flat = t.reshape(-1, *t.shape[2:])
        if not self.in_order:
            flat = flat.index_select(0, self.members)
        return flat.view(-1, self.size, *t.shape[2:])

    def restore(self, t: Tensor, batch: int) -> Tensor:
        """Per group slot (K+1, G, S, ...) -> per query (K+1, batch, Q, ...); drops spare slots."""
        K1, rest = t.shape[0], t.shape[3:]
        flat = t.reshape(K1, -1, *rest)
        if not self.in_order:
            flat = flat.index_select(1, self.slots)
        return flat.view(K1, batch, -1, *rest)

    def rows_of(self, table: Tensor) -> Tensor:
        """The groups' rows (H, G, ...) of a per-row table (H, rows, ...)."""
        return table if self.rows is None else table.index_select(1, self.rows)

    def matmul(self, x: Tensor, other: Tensor) -> Tensor:
        """Jet rows x (K+1, B, H, Q, n) times each query's own (H, G, n, m): (K+1, B, H, Q, m)."""
        K1, B, H, Q, n = x.shape
        G, m = other.shape[1], other.shape[-1]
        grouped = x.permute(2, 1, 3, 0, 4).reshape(H, B * Q, K1 * n).index_select(1, self.members)
        y = grouped.view(H, G, self.size * K1, n) @ other  # (H, G, S·(K+1), m)
        y = y.view(H, G * self.size, K1 * m).index_select(1, self.slots)
        return y.view(H, B, Q, K1, m).permute(3, 1, 0, 2, 4)


@dataclass
class LocalKeys:
    """Keys, values, bias jet and mask of keys that each query has for itself.

    With `groups` None the queries are arranged by group (`ChannelGroups.arrange`): batch
    row g holds group g's queries, `k`, `v` are each row's own keys, and the attention's
    bias covers them (`CrossBlock.joint_bias`); `bias` and `mask` are then unused.
    """

    k: Tensor  # (H, G, M, D/H): keys of each group's channel, see `ChannelGroups`
    v: Tensor  # (H, G, M, D/H)
    groups: ChannelGroups | None
    bias: Tensor | None  # (K+1, B, H, Q, M)
    mask: Tensor  # (B, 1, Q or 1, M) True = attend

    def joined(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Common keys and values (B or 1, H, N, D/H) followed by each batch row's own
        (`groups` None): (B, H, N + M, D/H) each."""
        B = self.k.shape[1]
        keys = torch.cat([k.expand(B, -1, -1, -1), self.k.transpose(0, 1)], 2)
        values = torch.cat([v.expand(B, -1, -1, -1), self.v.transpose(0, 1)], 2)
        return keys, values
