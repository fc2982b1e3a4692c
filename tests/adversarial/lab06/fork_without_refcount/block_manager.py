"""KNOWN-BAD SUBMISSION: fork copies the parent's block table but not its references.

Freeing the parent then frees blocks the child still holds (and an append to the shared
partial block writes into it without copy-on-write).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence as Seq


class NoFreeBlocks(RuntimeError):
    """allocate / append needed more free blocks than the pool has; nothing was changed."""


def default_block_hash(prev_hash: int | None, tokens: tuple[int, ...]) -> int:
    """Chained 64-bit hash of one full block: depends on the hash of every block before it."""
    h = hashlib.blake2b(digest_size=8)
    h.update(b"root" if prev_hash is None else prev_hash.to_bytes(8, "little", signed=False))
    h.update(",".join(map(str, tokens)).encode())
    return int.from_bytes(h.digest(), "little")


@dataclass
class Block:
    """One physical block's bookkeeping (the K/V themselves live in the cache tensors, not here)."""

    block_id: int
    ref_count: int = 0
    tokens: list[int] = field(default_factory=list)   # the token ids written in its slots, in order
    hash: int | None = None                            # set while the block is registered in the cache


@dataclass
class Sequence:
    seq_id: int
    block_table: list[int]
    num_tokens: int
    block_hashes: list[int] = field(default_factory=list)   # chained hash of each full block of the table


class BlockManager:
    """Allocates fixed-size KV blocks to sequences; prefix caching, copy-on-write forks, LRU eviction.

    BlockManager(num_blocks, block_size, hash_fn=default_block_hash). See the module docstring for the
    rules; every method below states its part.
    """

    def __init__(self, num_blocks: int, block_size: int,
                 hash_fn: Callable[[int | None, tuple[int, ...]], int] = default_block_hash):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hash_fn = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.seqs: dict[int, Sequence] = {}
        # Free blocks, split by rule 3: unregistered ones in a min-heap of ids, registered ones in an
        # OrderedDict whose first key is the block that became free the longest ago.
        self.free_ids: list[int] = list(range(num_blocks))
        self.evictable: OrderedDict[int, None] = OrderedDict()
        self.cache: dict[int, int] = {}          # hash -> registered block id

    # ---- state (given) -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Free blocks: unregistered ones plus registered ones that no table holds."""
        return len(self.free_ids) + len(self.evictable)

    def block_table(self, seq_id: int) -> list[int]:
        """The physical block ids of a sequence, in token order (a copy)."""
        return list(self.seqs[seq_id].block_table)

    def num_tokens(self, seq_id: int) -> int:
        return self.seqs[seq_id].num_tokens

    def ref_count(self, block_id: int) -> int:
        """How many block-table entries hold this block (0: the block is free)."""
        return self.blocks[block_id].ref_count

    # ---- helpers -------------------------------------------------------------------------------------

    def _take_fresh(self) -> Block:
        """Rule 3: the lowest-id unregistered free block, else evict the least recently freed one."""
        if self.free_ids:
            block = self.blocks[heapq.heappop(self.free_ids)]
        else:
            block = self.blocks[self.evictable.popitem(last=False)[0]]
            del self.cache[block.hash]
            block.hash = None
        block.tokens = []
        block.ref_count = 1
        return block

    def _hold(self, block: Block) -> None:
        if block.ref_count == 0:                 # a prefix hit on a free registered block
            del self.evictable[block.block_id]
        block.ref_count += 1

    def _release(self, block: Block) -> None:
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is None:
                heapq.heappush(self.free_ids, block.block_id)
            else:
                self.evictable[block.block_id] = None     # most recently freed: evicted last

    def _register(self, block: Block, h: int) -> None:
        if h not in self.cache:                  # rule 1: the first block under a hash stays
            self.cache[h] = block.block_id
            block.hash = h

    def _lookup(self, tokens: Seq[int]) -> tuple[list[int], list[Block]]:
        """Chained hashes of every full block of `tokens`, and the hit blocks (a prefix of the table)."""
        bs = self.block_size
        hashes: list[int] = []
        hits: list[Block] = []
        prev = None
        for i in range(len(tokens) // bs):
            chunk = tuple(tokens[i * bs:(i + 1) * bs])
            prev = self.hash_fn(prev, chunk)
            hashes.append(prev)
            if len(hits) == i:                   # no miss yet
                block_id = self.cache.get(prev)
                if block_id is not None and tuple(self.blocks[block_id].tokens) == chunk:
                    hits.append(self.blocks[block_id])
        return hashes, hits

    def _blocks_needed(self, tokens: Seq[int]) -> tuple[int, list[int], list[Block]]:
        hashes, hits = self._lookup(tokens)
        n_blocks = -(-len(tokens) // self.block_size)
        free_hits = {b.block_id for b in hits if b.ref_count == 0}
        return n_blocks - len(hits) + len(free_hits), hashes, hits

    # ---- operations ----------------------------------------------------------------------------------

    def can_allocate(self, tokens: Seq[int]) -> bool:
        """Whether allocate(new id, tokens) would succeed now (prefix hits taken into account)."""
        need, _, _ = self._blocks_needed(tokens)
        return need <= self.num_free_blocks

    def allocate(self, seq_id: int, tokens: Seq[int]) -> int:
        """Create a sequence holding the prompt `tokens`; returns how many of its tokens were prefix hits.

        Hit blocks first, then a fresh block for each remaining block in table order; every full fresh
        block is registered. Raises NoFreeBlocks (changing nothing) when the pool is short.
        """
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id} already exists")
        if len(tokens) == 0:
            raise ValueError("a prompt needs at least one token")
        need, hashes, hits = self._blocks_needed(tokens)
        if need > self.num_free_blocks:
            raise NoFreeBlocks(f"sequence {seq_id} needs {need} free blocks, {self.num_free_blocks} are free")
        bs = self.block_size
        for block in hits:
            self._hold(block)
        table = [b.block_id for b in hits]
        for i in range(len(hits), -(-len(tokens) // bs)):
            block = self._take_fresh()
            block.tokens = list(tokens[i * bs:(i + 1) * bs])
            if i < len(hashes):
                self._register(block, hashes[i])
            table.append(block.block_id)
        self.seqs[seq_id] = Sequence(seq_id, table, len(tokens), hashes)
        return len(hits) * bs

    def _append_needs_block(self, seq: Sequence) -> bool:
        if seq.num_tokens % self.block_size == 0:
            return True                                       # the last block is full
        return self.blocks[seq.block_table[-1]].ref_count > 1  # partial and shared: copy-on-write

    def can_append(self, seq_id: int) -> bool:
        """Whether append(seq_id, token) would succeed now."""
        return not self._append_needs_block(self.seqs[seq_id]) or self.num_free_blocks > 0

    def append(self, seq_id: int, token: int) -> tuple[int, int] | None:
        """Add one token. Returns (src, dst) when copy-on-write moved the sequence to a new block, else
        None. Registers the last block if this token fills it. NoFreeBlocks (nothing changed) when a
        block is needed and none is free."""
        seq = self.seqs[seq_id]
        copy = None
        if self._append_needs_block(seq):
            if self.num_free_blocks == 0:
                raise NoFreeBlocks(f"sequence {seq_id} needs a block to append, none is free")
            fresh = self._take_fresh()
            if seq.num_tokens % self.block_size:              # copy-on-write of a shared partial block
                shared = self.blocks[seq.block_table[-1]]
                fresh.tokens = list(shared.tokens)
                self._release(shared)
                copy = (shared.block_id, fresh.block_id)
                seq.block_table[-1] = fresh.block_id
            else:
                seq.block_table.append(fresh.block_id)
        last = self.blocks[seq.block_table[-1]]
        last.tokens.append(token)
        seq.num_tokens += 1
        if seq.num_tokens % self.block_size == 0:
            h = self.hash_fn(seq.block_hashes[-1] if seq.block_hashes else None, tuple(last.tokens))
            seq.block_hashes.append(h)
            self._register(last, h)
        return copy

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (ref counts + 1); nothing is copied until a write."""
        if child_id in self.seqs:
            raise ValueError(f"sequence {child_id} already exists")
        parent = self.seqs[parent_id]
        for block_id in parent.block_table:
            pass                                  # BUG: the child's blocks are not counted
        self.seqs[child_id] = Sequence(child_id, list(parent.block_table), parent.num_tokens,
                                       list(parent.block_hashes))

    def free(self, seq_id: int) -> None:
        """Drop a sequence; its blocks are released last to first (rule 3), registered ones stay cached."""
        seq = self.seqs.pop(seq_id)
        for block_id in reversed(seq.block_table):
            self._release(self.blocks[block_id])
