"""The decoder's own-channel index machinery: grouping by channel, grouped products."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.model._gather import ChannelGroups, by_query, channel_table


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    shared_cache=st.booleans(),
    n_queries=st.integers(1, 12),
    n_ids=st.integers(1, 5),
    row_tokens=st.sampled_from([1, 24]),
    seed=st.integers(0, 2**16),
)
def test_channel_groups_multiply_each_query_by_its_own_rows(
    batch: int, shared_cache: bool, n_queries: int, n_ids: int, row_tokens: int, seed: int
) -> None:
    """Grouped own-channel products equal gathering each query's rows (any id pattern)."""
    gen = torch.Generator().manual_seed(seed)
    cache_batch = 1 if shared_cache else batch
    ids = torch.randint(0, n_ids, (batch, n_queries), generator=gen)
    if n_queries > 3:  # a long run on one channel, as a trace or padding gives
        ids[0, : n_queries // 2] = 0
    H, K1, n, m = 2, 3, 4, 5
    x = torch.randn(K1, batch, H, n_queries, n, generator=gen, dtype=torch.float64)
    table = torch.randn(H, cache_batch * n_ids, n, m, generator=gen, dtype=torch.float64)
    groups = ChannelGroups.of(ids, cache_batch, n_ids, row_tokens)
    out = groups.matmul(x, groups.rows_of(table))
    row = ids + (torch.arange(batch)[:, None] * n_ids if cache_batch > 1 else 0)
    for b in range(batch):
        for q in range(n_queries):
            expected = x[:, b, :, q, None, :] @ table[:, row[b, q]]  # (K1, H, 1, m)
            torch.testing.assert_close(out[:, b, :, q], expected[:, :, 0])


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    n_tokens=st.integers(1, 20),
    n_ids=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_channel_table_lists_each_channels_real_tokens_in_order(
    batch: int, n_tokens: int, n_ids: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_ids, (batch, n_tokens), generator=gen)
    mask = torch.rand(batch, n_tokens, generator=gen) > 0.3
    table, valid = channel_table(ids, mask, n_ids)
    for b in range(batch):
        for c in range(n_ids):
            expected = [n for n in range(n_tokens) if mask[b, n] and ids[b, n] == c]
            assert table[b, c][valid[b, c]].tolist() == expected


def test_by_query_reads_each_querys_row_of_a_shared_or_batched_table() -> None:
    table = torch.arange(2 * 3 * 4).view(2, 3, 4)  # (B, n_ids, M)
    ids = torch.tensor([[2, 0], [1, 1]])
    assert by_query(table, ids).tolist() == [
        [table[0, 2].tolist(), table[0, 0].tolist()],
        [table[1, 1].tolist(), table[1, 1].tolist()],
    ]
    shared = by_query(table[:1], ids)
    assert shared[1, 0].tolist() == table[0, 1].tolist()


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    n_queries=st.integers(1, 12),
    n_ids=st.integers(1, 5),
    row_tokens=st.sampled_from([1, 24]),
    grouped=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_arranged_queries_are_their_groups_rows_and_restore_in_order(
    batch: int, n_queries: int, n_ids: int, row_tokens: int, grouped: bool, seed: int
) -> None:
    """Each arranged batch row holds queries of its group's row only; restoring gives every
    query back in place; queries that arrive grouped are arranged without a copy."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_ids, (batch, n_queries), generator=gen)
    if grouped:
        ids = ids.flatten().sort().values.view(batch, n_queries)
    groups = ChannelGroups.of(ids, 1, n_ids, row_tokens)
    arranged = groups.arrange(ids)  # (G, S)
    rows = groups.group_rows(n_ids)
    position = torch.arange(batch * n_queries).view(batch, n_queries)
    slots = groups.arrange(position).flatten()
    real = torch.zeros(slots.shape, dtype=torch.bool)
    real[groups.slots] = True  # the others are spare slots
    assert (arranged.flatten()[real] == rows.repeat_interleave(groups.size)[real]).all()
    assert torch.equal(groups.restore(arranged[None], batch)[0], ids)
    if grouped and groups.members.numel() == ids.numel():
        assert groups.in_order and arranged.data_ptr() == ids.data_ptr()
