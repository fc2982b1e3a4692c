"""Lab 06, part 1: the block manager of a paged KV cache (PagedAttention's memory side), in plain Python.

What you write: the methods of `BlockManager` marked TODO. `Block`, `Sequence`, `NoFreeBlocks`,
`default_block_hash`, the constructor's state and the state accessors are given (you may change the state
and the helpers: the grader calls only the public methods). Checked by `labs grade lab06` (entry
`block_manager`): the grader runs seeded random scripts of allocate / append / fork / free against your
class, records what it can observe after every operation (the `can_*` answers, each op's result, the free
count, every block's ref count, every block table, every length) and compares it, exactly, with its own
model of the rules below.

The pool: `num_blocks` physical blocks, ids 0 .. num_blocks-1, each holding the K/V of `block_size`
tokens. A sequence owns a block table: its i-th entry holds tokens [i*block_size, (i+1)*block_size).
A block is *in use* while at least one block table holds it (its ref count is the number of table
entries that hold it) and *free* when its ref count is 0. num_free_blocks + blocks in use = num_blocks.

The rules (every one is observable, so each is part of the contract):

1. Prefix caching. A *full* block of a sequence has a chained hash:
       h_0 = hash_fn(None, tokens of block 0),  h_i = hash_fn(h_{i-1}, tokens of block i)
   (tokens as a tuple of ints). Partial blocks are never hashed. When a block of a sequence becomes full
   (in `allocate`, or when `append` writes its last slot) it is *registered* in the cache under its
   hash -- unless the cache already holds a block under that hash: then the first one stays and this
   block stays unregistered. A registered block stays registered, in use or free, until it is evicted.
2. Prefix hits (`allocate`). For i = 0, 1, ... over the prompt's full blocks, look up h_i: a hit needs a
   registered block under h_i *whose tokens equal block i's tokens* (hashes can collide). The first miss
   ends the lookup: later blocks are not looked up. Hit blocks join the new table (ref count + 1; a hit
   on a free block takes it out of the free pool); every other block of the prompt gets a fresh block.
   allocate returns the number of prompt tokens served from the cache: hits * block_size.
3. Fresh blocks come from the free blocks that are not registered, lowest id first; only when there are
   none is a free registered block evicted (its registration dropped) and reused: the one that became
   free the longest ago (LRU). `free` releases a table from its last block to its first, so a
   sequence's tail is evicted before its head.
4. Copy-on-write. `fork(parent, child)` gives the child the parent's table and length (ref counts + 1;
   no block is copied). `append` to a sequence whose last block is partial and shared (ref count > 1)
   first moves that sequence to a fresh block holding a copy of the slots written so far (the other
   holders keep the original, whose ref count drops by 1) and returns (old block id, new block id): the
   caller copies the K/V. An append to a full last block takes a fresh block and copies nothing.
5. All or nothing. `allocate` and `append` that need more free blocks than there are raise
   `NoFreeBlocks` and change nothing (no block taken, no registration or LRU order touched);
   `can_allocate` / `can_append` say beforehand whether they would succeed. The free blocks an
   allocate needs: one per block that is not a hit, plus one per distinct hit block that is free now
   (a hit on a block in use costs nothing).

Sequence ids are arbitrary ints: `allocate` a new id (ValueError if it exists or the prompt is empty),
`append`, `fork` to a new id, `free` (KeyError for an unknown id). Aim for O(1) per block touched: a real
server's pool has tens of thousands of blocks, and the scheduler asks these questions every step.
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

    # ---- helpers (suggested; change them as you like) ------------------------------------------------

    def _take_fresh(self) -> Block:
        """Rule 3: a fresh block for new tokens, ref count 1, no tokens. The lowest-id unregistered free
        block; if there is none, evict the free registered block that became free the longest ago (drop
        its registration). The caller has checked that a free block exists."""
        # TODO(lab06): heapq.heappop(self.free_ids), else self.evictable.popitem(last=False) and forget
        #   the evicted block's hash (self.cache, block.hash); reset tokens, set ref_count = 1.
        raise NotImplementedError("lab06: BlockManager._take_fresh is not written yet")

    def _hold(self, block: Block) -> None:
        """One more table holds `block` (a prefix hit, or a fork)."""
        # TODO(lab06): a hit on a free registered block (ref count 0) takes it out of self.evictable.
        raise NotImplementedError("lab06: BlockManager._hold is not written yet")

    def _release(self, block: Block) -> None:
        """One table fewer holds `block`; at ref count 0 it becomes free (rule 3)."""
        # TODO(lab06): unregistered -> back on the heap; registered -> the most recent end of
        #   self.evictable (it keeps its hash and tokens: a later prompt may still hit it).
        raise NotImplementedError("lab06: BlockManager._release is not written yet")

    def _register(self, block: Block, h: int) -> None:
        """Rule 1: register a block that just became full, unless the hash is taken."""
        # TODO(lab06)
        raise NotImplementedError("lab06: BlockManager._register is not written yet")

    def _lookup(self, tokens: Seq[int]) -> tuple[list[int], list[Block]]:
        """Rule 2, read-only: (the chained hash of every full block of `tokens`, the hit blocks)."""
        # TODO(lab06): h_i = self.hash_fn(h_{i-1}, tuple(block i's tokens)) for every full block; hits
        #   while the lookup has not missed: self.cache.get(h_i) whose block's tokens equal block i's.
        raise NotImplementedError("lab06: BlockManager._lookup is not written yet")

    # ---- operations ----------------------------------------------------------------------------------

    def can_allocate(self, tokens: Seq[int]) -> bool:
        """Whether allocate(new id, tokens) would succeed now (prefix hits taken into account)."""
        # TODO(lab06): free blocks needed = blocks of the prompt - hits + distinct hits whose ref count is 0.
        raise NotImplementedError("lab06: BlockManager.can_allocate is not written yet")

    def allocate(self, seq_id: int, tokens: Seq[int]) -> int:
        """Create a sequence holding the prompt `tokens`; returns how many of its tokens were prefix hits.

        Hit blocks first, then a fresh block for each remaining block in table order; every full fresh
        block is registered. Raises NoFreeBlocks (changing nothing) when the pool is short.
        """
        # TODO(lab06): ValueError for an existing id or an empty prompt; check the cost before touching
        #   anything (rule 5); hold the hits; fresh blocks for the rest (their tokens, and _register the
        #   full ones); store Sequence(seq_id, table, len(tokens), hashes).
        raise NotImplementedError("lab06: BlockManager.allocate is not written yet")

    def can_append(self, seq_id: int) -> bool:
        """Whether append(seq_id, token) would succeed now."""
        # TODO(lab06): a block is needed when the last block is full, or partial and shared (rule 4).
        raise NotImplementedError("lab06: BlockManager.can_append is not written yet")

    def append(self, seq_id: int, token: int) -> tuple[int, int] | None:
        """Add one token. Returns (src, dst) when copy-on-write moved the sequence to a new block, else
        None. Registers the last block if this token fills it. NoFreeBlocks (nothing changed) when a
        block is needed and none is free."""
        # TODO(lab06): last block full -> a fresh block; partial and shared -> copy-on-write (fresh block
        #   with a copy of the tokens, release the shared one, replace it in the table, return the pair);
        #   write the token; when the block becomes full, hash it (chained on the sequence's previous
        #   block hash) and _register it.
        raise NotImplementedError("lab06: BlockManager.append is not written yet")

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (ref counts + 1); nothing is copied until a write."""
        # TODO(lab06)
        raise NotImplementedError("lab06: BlockManager.fork is not written yet")

    def free(self, seq_id: int) -> None:
        """Drop a sequence; its blocks are released last to first (rule 3), registered ones stay cached."""
        # TODO(lab06)
        raise NotImplementedError("lab06: BlockManager.free is not written yet")
