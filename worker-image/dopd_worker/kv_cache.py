"""Paged KV cache: fixed-size blocks, one block table per sequence, usage reported as 0..1.

`BlockAllocator` is the pure bookkeeping (unit-tested without torch); `PagedKVCache` holds the per-layer
K and V tensors `[num_blocks, block_size, kv_heads, head_dim]`; `build_batch` turns a list of sequences
(block table, tokens already cached, new tokens) into the index tensors the model's paged attention uses.
Callers: the engines (`engine.py`) and the KV transfer (`transfer.py`), which reads and writes whole
layers of one sequence's blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dopd_worker.config import ModelConfig
from dopd_worker.model import AttentionBatch


class OutOfBlocks(RuntimeError):
    """Not enough free KV blocks for a request; the caller queues it or tells the router to go elsewhere."""


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BlockAllocator:
    """Free list of block ids and the block table of each sequence. Pure: no torch, no clock."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """Fraction of blocks held by sequences, 0..1."""
        return 1.0 - len(self._free) / self.num_blocks

    def can_allocate(self, tokens: int) -> bool:
        return blocks_for(tokens, self.block_size) <= len(self._free)

    def table(self, seq_id: str) -> list[int]:
        return self._tables[seq_id]

    def has(self, seq_id: str) -> bool:
        return seq_id in self._tables

    def allocate(self, seq_id: str, tokens: int) -> list[int]:
        """A new block table holding `tokens` tokens; OutOfBlocks leaves everything unchanged."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already holds blocks")
        need = blocks_for(tokens, self.block_size)
        if need > len(self._free):
            raise OutOfBlocks(f"need {need} KV blocks for {tokens} tokens, {len(self._free)} free")
        table = [self._free.pop() for _ in range(need)]
        self._tables[seq_id] = table
        return table

    def ensure(self, seq_id: str, tokens: int) -> None:
        """Grow a sequence's table to hold `tokens` tokens (decode appends one token per step)."""
        table = self._tables[seq_id]
        need = blocks_for(tokens, self.block_size) - len(table)
        if need > len(self._free):
            raise OutOfBlocks(f"sequence {seq_id!r} needs {need} more KV blocks, {len(self._free)} free")
        for _ in range(max(need, 0)):
            table.append(self._free.pop())

    def free(self, seq_id: str) -> None:
        """Return a sequence's blocks; freeing an unknown sequence is a no-op (idempotent cleanup)."""
        table = self._tables.pop(seq_id, None)
        if table:
            self._free.extend(reversed(table))

    def sequences(self) -> list[str]:
        return list(self._tables)


class PagedKVCache:
    """Per-layer K/V block storage plus its allocator."""

    def __init__(
        self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.k: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        ]
        self.v: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        ]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def slots(self, table: Sequence[int], tokens: int) -> torch.Tensor:
        """Slot index of positions 0..tokens-1 of a sequence with this block table."""
        return slot_indices(table, 0, tokens, self.block_size).to(self.device)

    def read_layer(self, layer: int, table: Sequence[int], tokens: int) -> torch.Tensor:
        """K and V of one sequence's first `tokens` positions as one contiguous [2, tokens, kv, D] tensor."""
        idx = self.slots(table, tokens)
        k = self.k[layer].view(-1, *self.k[layer].shape[2:])[idx]
        v = self.v[layer].view(-1, *self.v[layer].shape[2:])[idx]
        return torch.stack((k, v))

    def write_layer(self, layer: int, table: Sequence[int], kv: torch.Tensor) -> None:
        """Inverse of `read_layer`: scatter a [2, tokens, kv, D] tensor into the sequence's blocks."""
        idx = self.slots(table, kv.shape[1])
        self.k[layer].view(-1, *self.k[layer].shape[2:]).index_copy_(0, idx, kv[0].to(self.dtype))
        self.v[layer].view(-1, *self.v[layer].shape[2:]).index_copy_(0, idx, kv[1].to(self.dtype))

    def layer_shape(self, tokens: int) -> tuple[int, int, int, int]:
        return (2, tokens, self.k[0].shape[2], self.k[0].shape[3])


def slot_indices(table: Sequence[int], start: int, stop: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(start, stop)
    blocks = torch.tensor(list(table), dtype=torch.long)
    return blocks[pos // block_size] * block_size + pos % block_size


@dataclass(frozen=True)
class SequenceSlice:
    """One sequence's part of a forward: its block table, tokens already cached, and new tokens."""

    table: Sequence[int]
    cached_tokens: int
    new_tokens: Sequence[int]


def build_batch(slices: Sequence[SequenceSlice], block_size: int, device: torch.device) -> AttentionBatch:
    """Index tensors for the model's paged forward; contexts and queries padded to the batch maximum."""
    if not slices:
        raise ValueError("empty batch")
    max_q = max(len(s.new_tokens) for s in slices)
    max_c = max(s.cached_tokens + len(s.new_tokens) for s in slices)
    batch = len(slices)
    input_ids: list[int] = []
    positions: list[torch.Tensor] = []
    slot_maps: list[torch.Tensor] = []
    query_index = torch.zeros(batch, max_q, dtype=torch.long)
    query_valid = torch.zeros(batch, max_q, dtype=torch.bool)
    context_slots = torch.zeros(batch, max_c, dtype=torch.long)
    attn_mask = torch.zeros(batch, 1, max_q, max_c, dtype=torch.bool)
    attn_mask[:, :, :, 0] = True  # padded query rows attend key 0 so they stay finite; they are dropped
    last_index = torch.zeros(batch, dtype=torch.long)
    offset = 0
    key_pos = torch.arange(max_c)
    for b, s in enumerate(slices):
        n_new, total = len(s.new_tokens), s.cached_tokens + len(s.new_tokens)
        input_ids.extend(s.new_tokens)
        positions.append(torch.arange(s.cached_tokens, total))
        slot_maps.append(slot_indices(s.table, s.cached_tokens, total, block_size))
        query_index[b, :n_new] = torch.arange(offset, offset + n_new)
        query_valid[b, :n_new] = True
        context_slots[b, :total] = slot_indices(s.table, 0, total, block_size)
        q_pos = torch.arange(s.cached_tokens, total)
        attn_mask[b, 0, :n_new, :] = key_pos[None, :] <= q_pos[:, None]
        offset += n_new
        last_index[b] = offset - 1
    return AttentionBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=torch.cat(positions).to(device),
        slot_mapping=torch.cat(slot_maps).to(device),
        query_index=query_index.to(device),
        query_valid=query_valid.to(device),
        context_slots=context_slots.to(device),
        attn_mask=attn_mask.to(device),
        last_index=last_index.to(device),
    )
