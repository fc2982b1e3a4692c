"""Lab 06 spec: PagedAttention -- a block manager (Python) and paged decode attention kernels (Triton).

Three entries:

    block_manager       BlockManager in block_manager.py, driven by a seeded random script of allocate /
                        append / fork / free. The script runs in the student's process (run_script below,
                        with the student's class); what it observes after every op comes back as one int64
                        trace (n_ops, width). The grading process runs the same script on PoolModel, a
                        plain restatement of the rules in block_manager.py's docstring, and the traces must
                        be equal, element for element.
    paged_decode        paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale) in
                        paged_attention.py: one program per (sequence, kv head).
    paged_decode_split  paged_decode_attention_split(...): split-KV (flash-decoding) and a reduce kernel.

Attention inputs: the cache's physical blocks are a random permutation (a kernel that assumes contiguous
blocks reads someone else's keys), spare blocks that no table uses, slots past each length and table
entries past each sequence's last block all hold NaN or point at NaN blocks: a load without a mask, or a
masked score multiplied into a NaN value (0 * NaN), shows up as NaN. Reference: gather each sequence's
blocks and attend, in fp64.

Speed (GPU, bf16): B = 32 sequences of 4096 tokens, 32 query heads / 8 kv heads, head dim 128, block
size 16 -- 537 MB of K/V per call, read once: the floor is a copy of those bytes. Against torch gathering
the blocks into a contiguous tensor and calling SDPA (what a user would write without a paged kernel).
"""

from __future__ import annotations

import hashlib
import random

import torch

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage2_llm/lab06_paged_kv"
BM_FILE = "block_manager.py"
ATTN_FILE = "paged_attention.py"

ENTRIES = {
    "block_manager": EntryPoint("block_manager", (BM_FILE,), "python",
                                "BlockManager in block_manager.py, driven by a seeded op script -> int64 trace"),
    "paged_decode": EntryPoint("paged_decode", (ATTN_FILE,), "triton",
                               "paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale) "
                               "in paged_attention.py -> o (B, H, D)"),
    "paged_decode_split": EntryPoint("paged_decode_split", (ATTN_FILE,), "triton",
                                     "paged_decode_attention_split(...) in paged_attention.py: split-KV + "
                                     "reduce -> o (B, H, D)"),
}

_MODULES: dict[str, object] = {}


def _module(path):
    key = str(path)
    if key not in _MODULES:
        _MODULES[key] = import_file(path, REPO_ROOT / PATH)
    return _MODULES[key]


def load_entry(name, files):
    if name == "block_manager":
        mod = _module(files[BM_FILE])

        def block_manager_entry(inputs, p):
            manager = mod.BlockManager(p["num_blocks"], p["block_size"], hash_fn=HASHES[p["hash"]])
            return run_script(manager, inputs["ops"], inputs["tokens"], p, getattr(mod, "NoFreeBlocks", ()))
        return block_manager_entry
    mod = _module(files[ATTN_FILE])
    if name == "paged_decode":
        def paged_decode_entry(inputs, p):
            return mod.paged_decode_attention(*_attn_args(inputs), scale=p.get("scale"))
        return paged_decode_entry

    def paged_decode_split_entry(inputs, p):
        return mod.paged_decode_attention_split(*_attn_args(inputs), scale=p.get("scale"),
                                                num_splits=p.get("splits"))
    return paged_decode_split_entry


def _attn_args(inputs):
    return inputs["q"], inputs["k_cache"], inputs["v_cache"], inputs["block_tables"], inputs["seq_lens"]


def call(fn, inputs, p):
    return fn(inputs, p)


# =================================================================================================
# Block manager: hashes, the model, the script runner, the script generator
# =================================================================================================

def chained_hash(prev, tokens) -> int:
    """The grader's block hash: sha256 of the previous block's hash and this block's tokens, 63 bits."""
    text = ("-" if prev is None else str(prev)) + "|" + " ".join(str(t) for t in tokens)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def weak_hash(prev, tokens) -> int:
    """A hash built to collide: the block's depth in the chain and the sum of its tokens mod 8. Blocks at
    the same depth whose tokens differ collide often, so only a token comparison tells them apart."""
    depth = 0 if prev is None else prev // 8 + 1
    return depth * 8 + sum(tokens) % 8


HASHES = {"default": chained_hash, "weak": weak_hash}


class ModelNoFreeBlocks(RuntimeError):
    pass


class PoolModel:
    """The rules of block_manager.py's docstring, restated as plainly as possible. Slow on purpose: ref
    counts, the free set and the registry are recounted from the block tables on every question.
    `stats` counts what a script exercised (collisions: a hash found whose block's tokens differ)."""

    def __init__(self, num_blocks, block_size, hash_fn):
        self.n, self.size, self.hash_fn = num_blocks, block_size, hash_fn
        self.tables: dict[int, list[int]] = {}      # seq -> physical blocks
        self.lengths: dict[int, int] = {}
        self.chain: dict[int, list[int]] = {}       # seq -> hash of each of its full blocks
        self.content: list[tuple] = [()] * num_blocks
        self.key: list[int | None] = [None] * num_blocks     # hash a block is registered under
        self.freed_at = [0] * num_blocks             # when the block last became free (rule 3's LRU)
        self.clock = 0
        self.stats = dict.fromkeys(("hit_blocks", "collisions", "evictions", "copies", "refused"), 0)

    # what a caller can observe
    def ref_count(self, b):
        return sum(table.count(b) for table in self.tables.values())

    @property
    def num_free_blocks(self):
        return sum(self.ref_count(b) == 0 for b in range(self.n))

    def block_table(self, seq):
        return list(self.tables[seq])

    def num_tokens(self, seq):
        return self.lengths[seq]

    # the rules
    def _owner_of(self, h):
        found = [b for b in range(self.n) if self.key[b] == h]
        return found[0] if found else None

    def _fresh(self):
        free = [b for b in range(self.n) if self.ref_count(b) == 0]
        unregistered = [b for b in free if self.key[b] is None]
        if unregistered:
            return min(unregistered)
        oldest = min(free, key=lambda b: self.freed_at[b])
        self.key[oldest] = None
        self.stats["evictions"] += 1
        return oldest

    def _pieces(self, tokens):
        return [tuple(tokens[i:i + self.size]) for i in range(0, len(tokens), self.size)]

    def _hits_and_cost(self, tokens):
        pieces = self._pieces(tokens)
        hashes, h = [], None
        for piece in pieces:
            if len(piece) == self.size:
                h = self.hash_fn(h, piece)
                hashes.append(h)
        hits = []
        for h, piece in zip(hashes, pieces):
            owner = self._owner_of(h)
            if owner is None or self.content[owner] != piece:
                self.stats["collisions"] += owner is not None
                break
            hits.append(owner)
        cost = len(pieces) - len(hits) + len({b for b in hits if self.ref_count(b) == 0})
        return pieces, hashes, hits, cost

    def can_allocate(self, tokens):
        return self._hits_and_cost(tokens)[3] <= self.num_free_blocks

    def allocate(self, seq, tokens):
        pieces, hashes, hits, cost = self._hits_and_cost(tokens)
        if cost > self.num_free_blocks:
            self.stats["refused"] += 1
            raise ModelNoFreeBlocks(seq)
        self.stats["hit_blocks"] += len(hits)
        self.tables[seq] = list(hits)
        self.lengths[seq] = len(tokens)
        self.chain[seq] = list(hashes)
        for i in range(len(hits), len(pieces)):
            b = self._fresh()
            self.tables[seq].append(b)
            self.content[b] = pieces[i]
            if i < len(hashes) and self._owner_of(hashes[i]) is None:
                self.key[b] = hashes[i]
        return len(hits) * self.size

    def _needs_block(self, seq):
        return self.lengths[seq] % self.size == 0 or self.ref_count(self.tables[seq][-1]) > 1

    def can_append(self, seq):
        return not self._needs_block(seq) or self.num_free_blocks > 0

    def append(self, seq, token):
        table, moved = self.tables[seq], None
        if self._needs_block(seq):
            if self.num_free_blocks == 0:
                self.stats["refused"] += 1
                raise ModelNoFreeBlocks(seq)
            b = self._fresh()
            if self.lengths[seq] % self.size == 0:
                table.append(b)
                self.content[b] = ()
            else:
                moved = (table[-1], b)
                self.stats["copies"] += 1
                self.content[b] = self.content[table[-1]]
                table[-1] = b
        last = table[-1]
        self.content[last] = self.content[last] + (token,)
        self.lengths[seq] += 1
        if self.lengths[seq] % self.size == 0:
            h = self.hash_fn(self.chain[seq][-1] if self.chain[seq] else None, self.content[last])
            self.chain[seq].append(h)
            if self._owner_of(h) is None:
                self.key[last] = h
        return moved

    def fork(self, parent, child):
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]
        self.chain[child] = list(self.chain[parent])

    def free(self, seq):
        table = self.tables.pop(seq)
        del self.lengths[seq], self.chain[seq]
        for i in range(len(table) - 1, -1, -1):
            b = table[i]
            if b not in table[:i] and self.ref_count(b) == 0:
                self.clock += 1
                self.freed_at[b] = self.clock


# ---- the script, and what is observed after each op -------------------------------------------------

ALLOC, APPEND, FORK, FREE = 0, 1, 2, 3
OP_NAMES = {ALLOC: "allocate", APPEND: "append", FORK: "fork", FREE: "free"}
NA, REFUSED, DIVERGED = -1, -2, -9      # trace codes: not applicable, NoFreeBlocks, the run went off-script
HEAD = 4                                # columns: can_*, result a, result b, free blocks


def seq_id_of(op_index: int) -> int:
    """The sequence id an allocate or fork (its child) creates at op `op_index`: not 0..n, not dense."""
    return 1000 + 7 * op_index


def trace_width(p) -> int:
    return HEAD + p["num_blocks"] + p["max_seqs"] * p["max_pages"] + p["max_seqs"]


def columns(p) -> str:
    """What each trace column holds, for messages."""
    nb, S, P = p["num_blocks"], p["max_seqs"], p["max_pages"]
    tab = HEAD + nb
    return (f"row i = after op i. col 0: can_allocate/can_append answer (1/0; -1 for fork/free); col 1-2: "
            f"allocate -> cached tokens (-2 if NoFreeBlocks); append -> copy-on-write (src, dst) block, -1 if "
            f"no copy, -2 if NoFreeBlocks; col 3: num_free_blocks; col {HEAD}-{tab - 1}: ref_count of blocks "
            f"0-{nb - 1}; col {tab}-{tab + S * P - 1}: block tables (slot s, entry j at col {tab} + {P}*s + j, "
            f"-1 = none); col {tab + S * P}-{tab + S * P + S - 1}: num_tokens per slot (-1 = no sequence)")


def describe_op(op, tokens) -> str:
    code, slot, arg, start, length = op
    if code == ALLOC:
        return f"allocate(slot {slot}, {length} tokens {list(tokens[start:start + length])})"
    if code == APPEND:
        return f"append(slot {slot}, token {arg})"
    if code == FORK:
        return f"fork(slot {slot} -> slot {arg})"
    return f"free(slot {slot})"


def run_script(manager, ops: torch.Tensor, tokens: torch.Tensor, p, no_free) -> torch.Tensor:
    """Apply the script to `manager` (a BlockManager or a PoolModel) and record the trace. Runs the
    student's class in the student's process and the model in the grading process, identically."""
    ops, tokens = ops.tolist(), tokens.tolist()
    S, P, nb = p["max_seqs"], p["max_pages"], p["num_blocks"]
    slots: list[int | None] = [None] * S
    rows: list[list[int]] = []
    for i, op in enumerate(ops):
        code, slot, arg, start, length = op
        where = f"op #{i} {describe_op(op, tokens)}"
        must_be_empty = {ALLOC: [slot], FORK: [arg]}.get(code, [])
        must_be_live = [] if code == ALLOC else [slot]
        if any(slots[s] is not None for s in must_be_empty) or any(slots[s] is None for s in must_be_live):
            rows += [[DIVERGED] * trace_width(p)] * (len(ops) - i)     # the state left the script earlier
            break
        try:
            head = [NA, NA, NA]
            if code == ALLOC:
                prompt = tokens[start:start + length]
                head[0] = int(bool(manager.can_allocate(prompt)))
                try:
                    head[1] = int(manager.allocate(seq_id_of(i), prompt))
                    slots[slot] = seq_id_of(i)
                except no_free:
                    head[1] = REFUSED
            elif code == APPEND:
                head[0] = int(bool(manager.can_append(slots[slot])))
                try:
                    copied = manager.append(slots[slot], arg)
                    if copied is not None:
                        head[1], head[2] = (int(x) for x in copied)
                except no_free:
                    head[1] = head[2] = REFUSED
            elif code == FORK:
                manager.fork(slots[slot], seq_id_of(i))
                slots[arg] = seq_id_of(i)
            else:
                manager.free(slots[slot])
                slots[slot] = None
            row = head + [int(manager.num_free_blocks)] + [int(manager.ref_count(b)) for b in range(nb)]
            lens = []
            for s, seq in enumerate(slots):
                table = [] if seq is None else [int(b) for b in manager.block_table(seq)]
                if len(table) > P:
                    raise ValueError(f"slot {s}'s block table has {len(table)} entries; a sequence of "
                                     f"{manager.num_tokens(seq)} tokens holds at most {P} blocks here")
                row += table + [NA] * (P - len(table))
                lens.append(NA if seq is None else int(manager.num_tokens(seq)))
            rows.append(row + lens)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - a student error, reported with the op that raised it
            raise RuntimeError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return torch.tensor(rows, dtype=torch.int64).reshape(len(ops), trace_width(p))


VOCAB = 7            # few token ids: prompts and appends often produce identical blocks
FAMILIES = 3         # shared "system prompts" that prompts start from (prefix hits)


def make_script(p, gen) -> dict[str, torch.Tensor]:
    """A random but valid script: ops (n_ops, 5) int64 rows [op, slot, arg, start, length] (arg: the token
    of an append, the child slot of a fork; start/length: the prompt's span of `tokens`), chosen by
    running PoolModel alongside so that every op fits the state the model is in (refusals included)."""
    rng = random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
    S, P, bs = p["max_seqs"], p["max_pages"], p["block_size"]
    cap = P * bs
    model = PoolModel(p["num_blocks"], bs, HASHES[p["hash"]])
    families = [[rng.randrange(VOCAB) for _ in range(cap)] for _ in range(FAMILIES)]
    seq: list[int | None] = [None] * S
    written: list[list[int]] = [[] for _ in range(S)]
    family: list[list[int] | None] = [None] * S
    ops, tokens = [], []
    for i in range(p["n_ops"]):
        live = [s for s in range(S) if seq[s] is not None]
        empty = [s for s in range(S) if seq[s] is None]
        room = [s for s in live if model.num_tokens(seq[s]) < cap]
        kinds = ([("alloc", 3.0)] if empty else []) + ([("append", 6.0)] if room else []) \
            + ([("fork", 1.2)] if live and empty else []) \
            + ([("free", 1.0 + 3.0 * (model.num_free_blocks <= 1))] if live else [])
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind == "alloc":
            s = rng.choice(empty)
            n = rng.choice((rng.randint(1, 2 * bs), rng.randint(1, cap), bs * rng.randint(1, P)))
            fam = rng.choice(families) if rng.random() < 0.75 else None
            prompt = list(fam[:n]) if fam else [rng.randrange(VOCAB) for _ in range(n)]
            if fam and rng.random() < 0.25:                     # the prefix diverges somewhere
                prompt[rng.randrange(n)] = rng.randrange(VOCAB)
            ops.append([ALLOC, s, NA, len(tokens), n])
            tokens += prompt
            try:
                model.allocate(seq_id_of(i), prompt)
                seq[s], written[s], family[s] = seq_id_of(i), prompt, fam
            except ModelNoFreeBlocks:
                pass
        elif kind == "append":
            s = rng.choice(room)
            n, fam = len(written[s]), family[s]
            follow = fam is not None and written[s] == fam[:n] and rng.random() < 0.7
            token = fam[n] if follow else rng.randrange(VOCAB)
            ops.append([APPEND, s, token, 0, 0])
            try:
                model.append(seq[s], token)
                written[s] = written[s] + [token]
            except ModelNoFreeBlocks:
                pass
        elif kind == "fork":
            s, child = rng.choice(live), rng.choice(empty)
            ops.append([FORK, s, child, 0, 0])
            model.fork(seq[s], seq_id_of(i))
            seq[child], written[child], family[child] = seq_id_of(i), list(written[s]), family[s]
        else:
            s = rng.choice(live)
            ops.append([FREE, s, NA, 0, 0])
            model.free(seq[s])
            seq[s] = None
    return {"ops": torch.tensor(ops, dtype=torch.int64).reshape(-1, 5),
            "tokens": torch.tensor(tokens or [0], dtype=torch.int64)}


def model_trace(inputs, p) -> torch.Tensor:
    model = PoolModel(p["num_blocks"], p["block_size"], HASHES[p["hash"]])
    return run_script(model, inputs["ops"].cpu(), inputs["tokens"].cpu(), p, ModelNoFreeBlocks)


def first_difference(inputs, p, got: torch.Tensor, expected: torch.Tensor) -> str:
    """The first op after which `got` and `expected` traces differ, in words (for the notebook)."""
    diff = (got != expected).nonzero()
    if len(diff) == 0:
        return "traces agree"
    i = int(diff[0, 0])
    ops, tokens = inputs["ops"].tolist(), inputs["tokens"].tolist()
    cols = [int(c) for c in diff[diff[:, 0] == i][:, 1]]
    nb, S, P = p["num_blocks"], p["max_seqs"], p["max_pages"]

    def name(c):
        if c < HEAD:
            return ("can_* answer", "result a", "result b", "num_free_blocks")[c]
        if c < HEAD + nb:
            return f"ref_count(block {c - HEAD})"
        if c < HEAD + nb + S * P:
            return f"block table of slot {(c - HEAD - nb) // P}"
        return f"num_tokens of slot {c - HEAD - nb - S * P}"

    lines = [f"first difference after op #{i}: {describe_op(ops[i], tokens)}"]
    for what in dict.fromkeys(name(c) for c in cols):
        sel = [c for c in cols if name(c) == what]
        lo, hi = min(sel), max(sel) + 1
        if what.startswith("block table"):
            s = (lo - HEAD - nb) // P
            lo, hi = HEAD + nb + s * P, HEAD + nb + (s + 1) * P
        lines.append(f"  {what}: got {got[i, lo:hi].tolist()}, expected {expected[i, lo:hi].tolist()}")
    return "\n".join(lines)


# =================================================================================================
# Paged decode attention: inputs, reference, baselines
# =================================================================================================

def _lengths(p, gen) -> torch.Tensor:
    """Explicit lengths, all equal to ctx ("full"), or uniform in [1, ctx] with 1, page, page + 1 and ctx
    among them ("ragged")."""
    if "lens" in p:
        return torch.tensor(p["lens"], dtype=torch.int32)
    B, ctx, page = p["B"], p["ctx"], p["page"]
    if p.get("lens_kind", "full") == "full":
        return torch.full((B,), ctx, dtype=torch.int32)
    lens = torch.randint(1, ctx + 1, (B,), generator=gen, dtype=torch.int32)
    edges = torch.tensor([1, page, page + 1, ctx], dtype=torch.int32).clamp(max=ctx)[:B]
    at = torch.randperm(B, generator=gen)[:len(edges)]
    lens[at] = edges
    return lens


def max_len(p) -> int:
    return max(p["lens"]) if "lens" in p else p["ctx"]


POOL_ROWS = 1 << 16


def _cache_rows(n_rows, d, gen, dtype, outliers):
    """n_rows rows of d values, each row a row drawn from a pool of <= 65536 random rows (rare x8 spikes)
    times its own scale in [0.25, 4], plus its own offset in [-0.5, 0.5]: the distribution of
    grader.inputs.realistic, at a cost that allows the 0.5 GB caches of the benchmark."""
    pool = torch.randn((min(n_rows, POOL_ROWS), d), generator=gen)
    pool = torch.where(torch.rand(pool.shape, generator=gen) < outliers, pool * 8, pool)
    rows = pool[torch.randint(0, pool.shape[0], (n_rows,), generator=gen)]
    scale = torch.exp(torch.empty(n_rows, 1).uniform_(-1.386, 1.386, generator=gen))
    offset = torch.empty(n_rows, 1).uniform_(-0.5, 0.5, generator=gen)
    return rows.mul_(scale).add_(offset).to(dtype)


def make_attn_inputs(p, gen):
    B, H, KVH, D, page = p["B"], p["H"], p["KVH"], p["D"], p["page"]
    dt = DTYPES[p["dtype"]]
    lens = _lengths(p, gen)
    pages = (lens + page - 1) // page
    n_used = int(pages.sum())
    spare = p.get("spare", 3)
    num_blocks = n_used + spare
    width = int(pages.max()) + p.get("extra_cols", 1)
    perm = torch.randperm(num_blocks, generator=gen)
    used, spares = perm[:n_used], perm[n_used:]
    # Table entries past each sequence's last block point at spare (NaN) blocks.
    tables = spares[torch.randint(0, spare, (B, width), generator=gen)].to(torch.int32)
    starts = torch.cumsum(pages, 0) - pages
    for b in range(B):
        tables[b, :int(pages[b])] = used[int(starts[b]):int(starts[b] + pages[b])].to(torch.int32)
    # Which (block, slot) pairs hold a token: everything else is NaN.
    valid = torch.zeros(num_blocks, page, dtype=torch.bool)
    for b in range(B):
        n = int(lens[b])
        owned = tables[b, :int(pages[b])].long()
        valid[owned] = True
        if n % page:
            valid[owned[-1], n % page:] = False
    shape = (num_blocks, page, KVH, D)
    k = _cache_rows(num_blocks * page * KVH, D, gen, dt, 0.0).view(shape)
    v = _cache_rows(num_blocks * page * KVH, D, gen, dt, 1e-3).view(shape)
    k.masked_fill_(~valid[:, :, None, None], float("nan"))
    v.masked_fill_(~valid[:, :, None, None], float("nan"))
    if p.get("layout") == "kv":           # K and V interleaved per block: (num_blocks, 2, page, KVH, D)
        kv = torch.stack((k, v), dim=1)
        k, v = kv[:, 0], kv[:, 1]
    q = realistic((B, H, D), gen, p["dtype"], outliers=0.0)
    if p.get("layout") == "qkv":          # q as a slice of a fused (B, H + 2 KVH, D) projection output
        qkv = torch.full((B, H + 2 * KVH, D), float("nan"), dtype=dt)
        qkv[:, :H] = q
        q = qkv[:, :H]
    return {"q": q, "k_cache": k, "v_cache": v, "block_tables": tables, "seq_lens": lens}


def make_inputs(p, gen):
    if p["entry"] == "block_manager":
        return make_script(p, gen)
    return make_attn_inputs(p, gen)


def attention_reference(inputs, p):
    """Gather each sequence's blocks, then attend, in fp64: o[b, h] = softmax(scale * K q) V."""
    q, kc, vc = inputs["q"], inputs["k_cache"], inputs["v_cache"]
    tables, lens = inputs["block_tables"].long(), inputs["seq_lens"].tolist()
    B, H, D = q.shape
    page, KVH = kc.shape[1], kc.shape[2]
    scale = p.get("scale") or D ** -0.5
    out = torch.empty((B, H, D), dtype=torch.float64, device=q.device)
    for b, n in enumerate(lens):
        blocks = tables[b, :(n + page - 1) // page]
        k = kc[blocks].reshape(-1, KVH, D)[:n].double().transpose(0, 1)      # (KVH, n, D)
        v = vc[blocks].reshape(-1, KVH, D)[:n].double().transpose(0, 1)
        qg = q[b].double().view(KVH, H // KVH, D)                            # (KVH, G, D)
        w = torch.softmax(qg @ k.transpose(1, 2) * scale, dim=-1)            # (KVH, G, n)
        out[b] = (w @ v).reshape(H, D)
    return out


def reference(inputs, p):
    if p["entry"] == "block_manager":
        return model_trace(inputs, p)
    return attention_reference(inputs, p)


def outputs(p):
    if p["entry"] == "block_manager":
        return [((p["n_ops"], trace_width(p)), "int64", "exact")]
    return [((p["B"], p["H"], p["D"]), p["dtype"])]


# ---- baselines --------------------------------------------------------------------------------------

def bytes_moved(p):
    """What a paged decode step must read at least once: every context token's K and V, in every kv
    head. q, o and the block tables are < 0.2% of it at the benchmark shape and left out."""
    e = DTYPES[p["dtype"]].itemsize
    total = sum(p["lens"]) if "lens" in p else p["B"] * p["ctx"]    # benchmarks use explicit or full lengths
    return float(2 * total * p["KVH"] * p["D"] * e)


def flops(p):
    total = sum(p["lens"]) if "lens" in p else p["B"] * p["ctx"]
    return 4.0 * total * p["H"] * p["D"]


_COPY_BUFFERS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def copy(inputs, p):
    """A device-to-device copy of bytes_moved / 2 bytes: it reads and writes as many bytes as the kernel
    must read, so copy_time / kernel_time is the fraction of achievable bandwidth the kernel reaches."""
    half = int(bytes_moved(p)) // 2
    if half not in _COPY_BUFFERS:
        _COPY_BUFFERS.clear()
        src = torch.empty(half, dtype=torch.uint8, device=inputs["q"].device)
        _COPY_BUFFERS[half] = (src, torch.empty_like(src))
    src, dst = _COPY_BUFFERS[half]
    return dst.copy_(src)


def gather_sdpa(inputs, p):
    """What a user writes without a paged kernel: gather every sequence's blocks into a contiguous
    (B, KVH, L, D) K and V (index + copy), then torch SDPA with GQA (and a length mask when the lengths
    differ; the gathered padding slots are zeroed first, as they hold NaN here)."""
    import torch.nn.functional as F

    q, kc, vc, tables, lens = _attn_args(inputs)
    B, H, D = q.shape
    page, KVH = kc.shape[1], kc.shape[2]
    n_pages = -(-max_len(p) // page)
    idx = tables[:, :n_pages].long()
    k = kc[idx].reshape(B, n_pages * page, KVH, D).transpose(1, 2)
    v = vc[idx].reshape(B, n_pages * page, KVH, D).transpose(1, 2)
    mask = None
    if "lens" in p or p.get("lens_kind", "full") != "full" or n_pages * page != max_len(p):
        mask = torch.arange(n_pages * page, device=q.device)[None, :] < lens[:, None]     # (B, L)
        k = k.masked_fill(~mask[:, None, :, None], 0.0)
        v = v.masked_fill(~mask[:, None, :, None], 0.0)
        mask = mask[:, None, None, :]
    o = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask, scale=p.get("scale"),
                                       enable_gqa=H != KVH)
    return o[:, :, 0, :]


# =================================================================================================
# Cases and benchmarks
# =================================================================================================

def bm(num_blocks, block_size, n_ops, max_seqs=4, max_pages=6, hash="default"):
    return {"entry": "block_manager", "num_blocks": num_blocks, "block_size": block_size, "n_ops": n_ops,
            "max_seqs": max_seqs, "max_pages": max_pages, "hash": hash, "dtype": "int64"}


def attn(entry, B, H, KVH, D, page, dtype, lens=None, ctx=None, lens_kind="ragged", layout=None, scale=None,
         splits=None):
    p = {"entry": entry, "B": B, "H": H, "KVH": KVH, "D": D, "page": page, "dtype": dtype}
    if lens is not None:
        p["lens"] = list(lens)
        assert len(lens) == B
    else:
        p["ctx"], p["lens_kind"] = ctx, lens_kind
    for k, val in (("layout", layout), ("scale", scale), ("splits", splits)):
        if val is not None:
            p[k] = val
    return p


def _name(p):
    if p["entry"] == "block_manager":
        tag = "-weakhash" if p["hash"] == "weak" else ""
        return (f"bs{p['block_size']}-nb{p['num_blocks']}-seqs{p['max_seqs']}x{p['max_pages']}-"
                f"ops{p['n_ops']}{tag}")
    lens = ("lens" + ",".join(map(str, p["lens"]))) if "lens" in p else f"{p['lens_kind']}{p['ctx']}"
    tags = "".join(f"-{k}{p[k]}" if k != "layout" else f"-{p[k]}" for k in ("layout", "scale", "splits") if k in p)
    return f"{p['dtype']}-b{p['B']}-h{p['H']}kv{p['KVH']}-d{p['D']}-page{p['page']}-{lens}{tags}"


CPU, BOTH, GPU = ("cpu",), ("cpu", "gpu"), ("gpu",)
ATTN_ENTRIES = ("paged_decode", "paged_decode_split")


def _cases():
    cases = []
    # Block manager: pure Python, same on both tiers. Tight pools refuse often (rule 5); block size 1
    # makes every token a full block; 3 is not a power of two; the weak hash makes collisions the norm.
    for p in (bm(16, 4, 160), bm(10, 4, 200, max_pages=5), bm(12, 1, 150, max_pages=8), bm(20, 3, 200, 5),
              bm(9, 16, 120, max_pages=3), bm(16, 4, 200, hash="weak"), bm(9, 2, 250, 3, 6, hash="weak")):
        cases.append(Case(_name(p), "block_manager", p, BOTH, trials=3))
    # Attention, CPU tier (the interpreter): lengths 1, page, page + 1 and multiples of the page in one
    # batch; GQA group sizes 1, 2, 4, 8; pages smaller than, equal to and larger than the interpreter's
    # 16-token tile; strided q and interleaved K/V.
    cpu = [attn("", 5, 4, 2, 64, 16, "fp32", lens=(1, 16, 17, 48, 29)),
           attn("", 4, 8, 2, 128, 16, "fp16", lens=(33, 1, 64, 15)),
           attn("", 3, 4, 4, 64, 8, "fp16", lens=(8, 9, 40)),
           attn("", 3, 8, 1, 64, 32, "fp32", lens=(31, 32, 70), scale=0.05),
           attn("", 4, 4, 2, 64, 16, "fp16", lens=(20, 1, 47, 16), layout="qkv"),
           attn("", 3, 4, 2, 64, 16, "fp32", lens=(5, 16, 33), layout="kv")]
    gpu = []
    for d in (64, 128):
        for h, kvh in ((8, 8), (32, 8), (16, 2)):
            for dt in ("bf16", "fp16"):
                gpu.append(attn("", 6, h, kvh, d, 16, dt, ctx=1100))
    gpu += [attn("", 8, 32, 8, 128, 32, "bf16", ctx=3000), attn("", 8, 32, 8, 128, 8, "bf16", ctx=700),
            attn("", 5, 32, 8, 128, 16, "bf16", lens=(1, 16, 17, 4096, 8193)),
            attn("", 7, 16, 4, 128, 16, "bf16", ctx=2000, layout="qkv"),
            attn("", 7, 16, 4, 128, 16, "bf16", ctx=2000, layout="kv"),
            attn("", 64, 32, 8, 128, 16, "bf16", ctx=600),
            attn("", 2, 32, 8, 128, 16, "bf16", ctx=32768, lens_kind="full"),
            attn("", 32, 32, 8, 128, 16, "bf16", ctx=4096, lens_kind="full")]
    for entry in ATTN_ENTRIES:
        for p, tiers in [(p, CPU) for p in cpu] + [(p, GPU) for p in gpu]:
            p = dict(p, entry=entry)
            cases.append(Case(_name(p), entry, p, tiers))
    for splits in (1, 3):       # an explicit split count: one split (the reduce of one), and 3
        p = attn("paged_decode_split", 4, 8, 2, 64, 16, "fp16", lens=(1, 40, 64, 17), splits=splits)
        cases.append(Case(_name(p), "paged_decode_split", p, BOTH))
    return cases


def hidden_cases(seed):
    rng = random.Random(seed * 7919 + 6)
    out = []
    p = bm(rng.randint(6, 24), rng.choice((1, 2, 3, 4, 8)), rng.randint(100, 250), rng.randint(2, 5),
           rng.randint(3, 6), hash=rng.choice(("default", "weak")))
    out.append(Case("seeded-" + _name(p), "block_manager", p, BOTH, trials=2))
    for entry in ATTN_ENTRIES:
        kvh, g = rng.choice((1, 2, 4)), rng.choice((1, 2, 4, 8))
        page = rng.choice((8, 16, 32))
        lens = [rng.randint(1, 3 * page + 5) for _ in range(rng.randint(1, 4))]
        small = attn(entry, len(lens), kvh * g, kvh, rng.choice((64, 128)), page, rng.choice(("fp32", "fp16")),
                     lens=lens)
        out.append(Case("seeded-" + _name(small), entry, small, BOTH))
        kvh = rng.choice((2, 4, 8))
        big = attn(entry, rng.randint(1, 40), kvh * rng.choice((1, 4, 8)), kvh, rng.choice((64, 128)),
                   rng.choice((16, 32)), "bf16", ctx=rng.randint(1, 9000))
        out.append(Case("seeded-" + _name(big), entry, big, GPU))
    return out


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


# copy: the target, 70% of the bandwidth a device copy of the same bytes reaches, for full marks.
COPY_TIERS = _tiers((0.4, 0.25), (0.5, 0.5), (0.6, 0.75), (0.7, 1.0))
# gather + SDPA: the gather reads and writes every K/V byte once before SDPA reads them again (~3x the
# traffic of a paged kernel): full marks at the 1.0x, which any kernel near the copy line clears.
SDPA_TIERS = _tiers((0.5, 0.25), (0.75, 0.5), (1.0, 1.0))
INFO = _tiers((0.0, 1.0))
BENCH_SHAPE = dict(B=32, H=32, KVH=8, D=128, page=16, dtype="bf16", ctx=4096, lens_kind="full")
LONG_SHAPE = dict(B=4, H=32, KVH=8, D=128, page=16, dtype="bf16", ctx=16384, lens_kind="full")


def _benchmarks():
    out = []
    for entry in ATTN_ENTRIES:
        p = attn(entry, **BENCH_SHAPE)
        tag = f"{entry}-bf16-b32-h32kv8-d128-page16-ctx4096"
        out.append(Benchmark(f"{tag}-copy", entry, p, "copy", COPY_TIERS, points=2,
                             target_note=">= 0.7x a device copy of the K/V bytes (537 MB)"))
        out.append(Benchmark(f"{tag}-gather_sdpa", entry, p, "gather_sdpa", SDPA_TIERS, points=1,
                             target_note=">= 1.0x torch gather + SDPA"))
        # informational: 4 long sequences give the one-program-per-(sequence, kv head) kernel only 32
        # programs for 132 SMs; splitting the context is what fills the GPU.
        p = attn(entry, **LONG_SHAPE)
        out.append(Benchmark(f"{entry}-bf16-b4-h32kv8-d128-page16-ctx16384-copy", entry, p, "copy", INFO,
                             points=0, target_note="informational: few long sequences"))
    return out


def sweep(entry):
    if entry == "block_manager":
        return []
    if not torch.cuda.is_available():
        return [attn(entry, 2, 4, 2, 64, 16, "fp32", ctx=n, lens_kind="full") for n in (16, 64, 128)]
    return [attn(entry, 32, 32, 8, 128, 16, "bf16", ctx=n, lens_kind="full") for n in (256, 1024, 4096, 16384)]


def hints(kind, p):
    if p["entry"] == "block_manager":
        return (f"the trace differs from the rules in block_manager.py's docstring. {columns(p)}. In the "
                "notebook, LAB.first_difference(...) names the op and what differs")
    if kind in ("nan", "unwritten"):
        return ("NaN: the cache holds NaN in every slot past a sequence's length, in unused blocks, and the table "
                "points past the last block at NaN blocks. Mask the K and V loads (other=0) with token < seq_len "
                "(a masked score of -inf still gives p = 0, and 0 * NaN = NaN in p @ V), and the split reduce must "
                "skip splits past the sequence (their partials are never written)")
    return ("gather through the table: token t of sequence b is slot t % block_size of physical block "
            "block_tables[b, t // block_size] (blocks are shuffled, not contiguous); query head h reads kv head "
            "h // (H // KVH); scale the scores by `scale` (default 1/sqrt(D)); the split reduce weighs each "
            "split by exp(lse_s - max lse)")


SPEC = LabSpec(
    id="lab06",
    title="PagedAttention: block manager (prefix caching, copy-on-write) and paged decode kernels",
    path=PATH,
    seed_topic="PagedAttention: paged KV cache management, block tables, the paged decode kernel",
    student_files=(BM_FILE, ATTN_FILE),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    # Attention: the kernel computes q.k in fp32 (tensor cores, fp16/bf16 inputs), keeps m, l, acc in fp32,
    # rounds P to the cache dtype for P @ V and o once on the store -- lab 04's forward, one query row.
    # P's rounding (u = 2^-11 fp16, 2^-8 bf16) dominates: tolerances as lab 04's forward.
    # fp32 (CPU, the interpreter computes exactly in fp32): sums over <= 70 tokens: ~1e-6; 1e-4 still rejects
    # an fp16 P (~5e-4). Block manager traces: exact.
    tolerances={"fp32": Tolerance(rtol=1e-4, atol_rms=1e-4),
                "fp16": Tolerance(rtol=2e-3, atol_rms=2e-3),
                "bf16": Tolerance(rtol=1.6e-2, atol_rms=1.6e-2),
                "exact": Tolerance(rtol=0.0, atol_rms=0.0)},
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=_benchmarks(),
    salt=('q',),
    baselines={"copy": copy, "gather_sdpa": gather_sdpa},
    flops=flops,
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "tensor_" + p["dtype"],
    # The library attention kernels, the matmuls, softmax: the kernel is the lab.
    blocked_ops=("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_flash_attention_forward", "_efficient_attention_forward", "mm", "bmm", "_softmax"),
    # Also gathering the blocks with torch (index, index_select, gather, ...): the paging must happen in
    # your kernel, not in a copy before it. (Not blocked outright: the grader's own input generator indexes.)
    forbidden_ops=(r"^aten::_?scaled_dot_product", r"^aten::_(flash|efficient|cudnn)_attention",
                   r"^aten::(mm|bmm|matmul|addmm|baddbmm|einsum|linear|tensordot)$",
                   r"^aten::(_?softmax|_?log_softmax|_safe_softmax)$",
                   r"^aten::(index|_unsafe_index|index_select|gather|take|take_along_dim|embedding)$"),
    forbidden_kernels=("flash_fwd", "fmha", "cudnn", "xmma", "cutlass", "nvjet", "gemm", "cublas", r"^sm\d+_",
                       r"index_elementwise", r"indexSelect", r"gather_kernel", r"softmax"),
    hints=hints,
    time_limit_s=300.0,
    sweep=sweep,
    notebook="lab06_paged_kv.ipynb",
)

for _c in SPEC.all_cases(0) + [Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
    assert _c.params["entry"] == _c.entry, f"lab06 spec: case {_c.name} has entry {_c.params['entry']}"
