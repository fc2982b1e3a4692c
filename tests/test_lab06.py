"""Lab 06 (PagedAttention) on the CPU tier: the block-manager model and scripts are sound and discriminating,
the solution's BlockManager keeps its invariants under hypothesis-driven operation sequences, the attention
inputs hide NaN where a kernel must not look, the solutions pass, the skeleton fails cleanly, every known-bad
submission in tests/adversarial/lab06/ is rejected for the right reason, and the solution kernels compile for
sm_90 (the interpreter never compiles them).
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from grader import REPO_ROOT
from grader.compare import compare
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab06"
SPEC = get(LAB)
L = importlib.import_module("grader.labs.lab06_paged_kv")
ENTRIES = ("block_manager", "paged_decode", "paged_decode_split")
ATTN = ("paged_decode", "paged_decode_split")
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
SOL_DIR = REPO_ROOT / "solutions" / SPEC.path
SKEL_DIR = REPO_ROOT / SPEC.path
BM = import_file(SOL_DIR / "block_manager.py")


@pytest.fixture(scope="module")
def solutions(graded):
    return graded(LAB, "solutions", cpu=True)


@pytest.fixture(scope="module")
def skeleton(graded):
    return graded(LAB, "student", cpu=True)


def assert_rejected(c, *needles: str):
    assert c.status == "fail", f"{c.name} was not rejected: {c.status}: {c.message}"
    assert c.points == 0
    for n in needles:
        assert n.lower() in c.message.lower(), f"{c.name}: expected {n!r} in: {c.message}"


def solution_manager(p):
    return BM.BlockManager(p["num_blocks"], p["block_size"], hash_fn=L.HASHES[p["hash"]])


def script(p, seed):
    return L.make_script(p, torch.Generator().manual_seed(seed))


# ---- the spec: cases --------------------------------------------------------------------------------

def test_every_case_names_its_entry():
    for c in SPEC.all_cases(4242) + list(SPEC.benchmarks):
        assert c.params["entry"] == c.entry, c.name


@pytest.mark.parametrize("entry", ATTN)
def test_cpu_attention_cases_hit_every_edge(entry):
    cases = [c.params for c in CPU_CASES if c.entry == entry and not c.name.startswith("seeded")]
    lens = [(n, p["page"]) for p in cases for n in p["lens"]]
    assert any(n == 1 for n, _ in lens) and any(n == pg for n, pg in lens) and any(n == pg + 1 for n, pg in lens)
    assert any(n % pg == 0 and n >= 2 * pg for n, pg in lens), "k * block_size"
    assert {p["H"] // p["KVH"] for p in cases} >= {1, 2, 4, 8}
    assert {p["page"] for p in cases} >= {8, 16, 32}, "pages smaller than, equal to and larger than the 16-token tile"
    assert {p["dtype"] for p in cases} == {"fp32", "fp16"}, "the interpreter mishandles bf16"
    assert {p.get("layout") for p in cases} >= {None, "qkv", "kv"} and any("scale" in p for p in cases)
    assert {p["D"] for p in cases} == {64, 128}


@pytest.mark.parametrize("entry", ATTN)
def test_gpu_attention_cases(entry):
    gpu = [c.params for c in SPEC.all_cases(0) if c.entry == entry and "gpu" in c.tiers]
    assert {p["dtype"] for p in gpu} >= {"bf16", "fp16"} and {p["D"] for p in gpu} == {64, 128}
    assert {p["H"] // p["KVH"] for p in gpu} >= {1, 4, 8}
    assert any(L.max_len(p) > 8192 for p in gpu), "a context longer than any benchmark"
    bench = L.BENCH_SHAPE
    assert any(all(p.get(k) == v for k, v in bench.items()) for p in gpu), "the benchmark shape is checked too"


def test_block_manager_cases_run_on_both_tiers_with_both_hashes():
    cases = [c for c in SPEC.all_cases(0) if c.entry == "block_manager"]
    assert all(set(c.tiers) == {"cpu", "gpu"} and c.trials >= 2 for c in cases)
    assert {c.params["hash"] for c in cases} == {"default", "weak"}
    assert {c.params["block_size"] for c in cases} >= {1, 3, 4, 16}
    assert SPEC.outputs(cases[0].params) == [((cases[0].params["n_ops"], L.trace_width(cases[0].params)), "int64",
                                              "exact")]
    assert SPEC.tolerances["exact"].rtol == 0 and SPEC.tolerances["exact"].atol_rms == 0


# ---- the spec: block manager model and scripts ------------------------------------------------------------

def test_scripts_are_deterministic_and_valid():
    p = L.bm(12, 4, 150)
    a, b = script(p, 3), script(p, 3)
    assert torch.equal(a["ops"], b["ops"]) and torch.equal(a["tokens"], b["tokens"])
    assert not torch.equal(a["ops"], script(p, 4)["ops"])
    ops = a["ops"].tolist()
    assert ops[0][0] == L.ALLOC and len(ops) == 150
    assert {op[0] for op in ops} == {L.ALLOC, L.APPEND, L.FORK, L.FREE}
    trace = L.model_trace(a, p)
    assert trace.shape == (150, L.trace_width(p)) and (trace != L.DIVERGED).all(), "the model never leaves its script"


@pytest.mark.parametrize("case", [c for c in SPEC.all_cases(0) if c.entry == "block_manager"], ids=lambda c: c.name)
def test_solution_matches_the_model_on_many_scripts(case):
    p = case.params
    for seed in range(12):
        inputs = script(p, seed)
        got = L.run_script(solution_manager(p), inputs["ops"], inputs["tokens"], p, BM.NoFreeBlocks)
        want = L.model_trace(inputs, p)
        assert torch.equal(got, want), L.first_difference(inputs, p, got, want)


def test_scripts_exercise_every_rule():
    """Summed over a few seeds, each CPU case family provokes what its rules are about."""
    totals = collections.Counter()
    for c in [c for c in SPEC.cases if c.entry == "block_manager"]:
        p = c.params
        for seed in range(3):
            inputs = script(p, seed)
            model = L.PoolModel(p["num_blocks"], p["block_size"], L.HASHES[p["hash"]])
            L.run_script(model, inputs["ops"], inputs["tokens"], p, L.ModelNoFreeBlocks)
            for k, v in model.stats.items():
                totals[(p["hash"], k)] += v
    for h in ("default", "weak"):
        for k in ("hit_blocks", "evictions", "copies", "refused"):
            assert totals[(h, k)] >= 10, (h, k, totals)
    assert totals[("weak", "collisions")] >= 20, totals
    assert totals[("default", "collisions")] == 0, "a 60-bit hash must not collide here"


def test_weak_hash_collides_only_within_a_depth():
    assert L.weak_hash(None, (1, 2)) == L.weak_hash(None, (3, 0)) != L.weak_hash(None, (1, 1))
    h = L.weak_hash(None, (1, 2))
    assert L.weak_hash(h, (1, 2)) != h and L.weak_hash(h, (1, 2)) // 8 == 1
    assert L.chained_hash(None, (1, 2)) != L.chained_hash(L.chained_hash(None, (1, 2)), (1, 2))


def test_model_by_hand():
    """The docstring's rules on a hand-made sequence of operations (block size 2, 4 blocks)."""
    m = L.PoolModel(4, 2, L.chained_hash)
    assert m.allocate(1, [7, 8, 9]) == 0 and m.block_table(1) == [0, 1]        # fresh blocks, lowest id first
    assert m.allocate(2, [7, 8, 5]) == 2 and m.block_table(2) == [0, 2]        # block 0 hit (full, same tokens)
    assert [m.ref_count(b) for b in range(4)] == [2, 1, 1, 0] and m.num_free_blocks == 1
    m.fork(2, 3)
    assert m.append(3, 6) == (2, 3) and m.block_table(3) == [0, 3]             # copy-on-write of the shared partial
    assert m.can_append(2) and not m.can_allocate([1])      # block 2 is seq 2's alone again; the pool is full
    with pytest.raises(L.ModelNoFreeBlocks):
        m.allocate(4, [1])
    m.free(3)                                # block 3 ([7,8][5,6]: full, registered) and block 0 (still held)
    assert m.num_free_blocks == 1 and m.ref_count(3) == 0
    assert m.allocate(5, [7, 8, 5, 6]) == 4 and m.block_table(5) == [0, 3]     # a hit on a free cached block
    m.free(5), m.free(2), m.free(1)
    assert m.num_free_blocks == 4
    assert m.allocate(6, [1, 1, 1, 1, 1]) == 0
    # unregistered free blocks first (1, 2: partial when freed), then the least recently freed cached block:
    # freed in order 3 (seq 5's tail), then 0 when seq 1 went (seq 5 and 2 had let go of it before).
    assert m.block_table(6) == [1, 2, 3]


# ---- hypothesis: the solution's invariants after every operation -------------------------------------------

FAMILIES = [[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], [1, 2, 3, 0, 0, 0, 2, 2, 1, 0, 3, 3], [2, 2, 2, 2, 1, 1, 1, 1]]
prompts = st.tuples(st.integers(0, 2), st.integers(1, 12), st.lists(st.integers(0, 3), max_size=4)).map(
    lambda t: FAMILIES[t[0]][:t[1]] + t[2])        # shared prefixes (hits), then a random tail


def snapshot(bm, seqs, n):
    return (bm.num_free_blocks, [bm.ref_count(b) for b in range(n)],
            {s: (bm.block_table(s), bm.num_tokens(s)) for s in seqs})


class BlockManagerMachine(RuleBasedStateMachine):
    """The solution's BlockManager and the spec's PoolModel side by side. After every operation: free +
    used = total, each ref count equals the number of table entries holding the block, a block is free
    exactly when its ref count is 0, tables have ceil(tokens / block_size) entries, and the model agrees.
    A refused allocate or append changes nothing."""

    @initialize(num_blocks=st.integers(1, 10), block_size=st.sampled_from((1, 2, 3, 4)), weak=st.booleans())
    def setup(self, num_blocks, block_size, weak):
        h = L.weak_hash if weak else L.chained_hash
        self.n, self.bs = num_blocks, block_size
        self.bm = BM.BlockManager(num_blocks, block_size, hash_fn=h)
        self.model = L.PoolModel(num_blocks, block_size, h)
        self.seqs: list[int] = []
        self.next_id = 100

    def _new_id(self):
        self.next_id += 3
        return self.next_id

    @rule(tokens=prompts)
    def allocate(self, tokens):
        sid, before = self._new_id(), snapshot(self.bm, self.seqs, self.n)
        can = self.bm.can_allocate(tokens)
        assert can == self.model.can_allocate(tokens)
        try:
            cached = self.bm.allocate(sid, tokens)
        except BM.NoFreeBlocks:
            assert not can and snapshot(self.bm, self.seqs, self.n) == before, "a refused allocate changed the state"
            with pytest.raises(L.ModelNoFreeBlocks):
                self.model.allocate(sid, tokens)
            return
        assert can and cached == self.model.allocate(sid, tokens) and cached % self.bs == 0
        self.seqs.append(sid)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), token=st.integers(0, 3))
    def append(self, data, token):
        sid, before = data.draw(st.sampled_from(self.seqs)), snapshot(self.bm, self.seqs, self.n)
        can = self.bm.can_append(sid)
        assert can == self.model.can_append(sid)
        try:
            copied = self.bm.append(sid, token)
        except BM.NoFreeBlocks:
            assert not can and snapshot(self.bm, self.seqs, self.n) == before, "a refused append changed the state"
            return
        assert can and copied == self.model.append(sid, token)
        if copied is not None:
            src, dst = copied
            assert self.bm.block_table(sid)[-1] == dst and self.bm.ref_count(src) >= 1

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data):
        parent, child = data.draw(st.sampled_from(self.seqs)), self._new_id()
        self.bm.fork(parent, child)
        self.model.fork(parent, child)
        assert self.bm.block_table(child) == self.bm.block_table(parent)
        self.seqs.append(child)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(st.sampled_from(self.seqs))
        self.bm.free(sid)
        self.model.free(sid)
        self.seqs.remove(sid)

    @invariant()
    def state_is_consistent(self):
        if not hasattr(self, "bm"):
            return
        tables = {s: self.bm.block_table(s) for s in self.seqs}
        holds = collections.Counter(b for t in tables.values() for b in t)
        refs = [self.bm.ref_count(b) for b in range(self.n)]
        assert refs == [holds[b] for b in range(self.n)], "ref count != number of table entries holding the block"
        assert self.bm.num_free_blocks == sum(r == 0 for r in refs), "free blocks != blocks with ref count 0"
        assert self.bm.num_free_blocks + len(holds) == self.n, "free + used != total"
        for s, t in tables.items():
            assert len(t) == -(-self.bm.num_tokens(s) // self.bs)
        assert snapshot(self.bm, self.seqs, self.n) == snapshot(self.model, self.seqs, self.n)


BlockManagerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                                 suppress_health_check=[HealthCheck.too_slow])
test_block_manager_invariants = BlockManagerMachine.TestCase


# ---- the spec's scripts catch plausible block-manager bugs (mutants of the solution) -------------------------

MUTANTS = {
    "lru evicts the most recently freed": [("popitem(last=False)", "popitem(last=True)")],
    "free releases head first": [("for block_id in reversed(seq.block_table):", "for block_id in seq.block_table:")],
    "hit by hash alone": [("if block_id is not None and tuple(self.blocks[block_id].tokens) == chunk:",
                           "if block_id is not None:")],
    "lookup goes on after a miss": [("            if len(hits) == i:", "            if True:")],
    "a hit on a free block costs nothing": [("n_blocks - len(hits) + len(free_hits)", "n_blocks - len(hits)")],
    "evicts before using empty blocks": [("        if self.free_ids:\n", "        if not self.evictable:\n")],
    "no copy-on-write": [("return self.blocks[seq.block_table[-1]].ref_count > 1", "return False")],
    "copy-on-write keeps the old reference": [("                self._release(shared)\n", "")],
    "highest free id first": [("heapq.heappop(self.free_ids)",
                               "self.free_ids.pop(self.free_ids.index(max(self.free_ids)))")],
    "appended blocks never registered": [("            self._register(last, h)\n", "")],
    "freed cached blocks forget their hash": [("            if block.hash is None:\n", "            if True:\n")],
    "fork does not count the child": [("            self.blocks[block_id].ref_count += 1\n        self.seqs[child_id]",
                                       "            pass\n        self.seqs[child_id]")],
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_block_manager_cases_catch_mutant(mutant, tmp_path):
    src = (SOL_DIR / "block_manager.py").read_text()
    for a, b in MUTANTS[mutant]:
        assert a in src, a
        src = src.replace(a, b)
    path = tmp_path / "block_manager.py"
    path.write_text(src)
    mod = import_file(path)
    caught = []
    for c in [c for c in SPEC.cases if c.entry == "block_manager"]:
        p = c.params
        for seed in range(c.trials):
            inputs = script(p, seed)
            try:
                got = L.run_script(mod.BlockManager(p["num_blocks"], p["block_size"], hash_fn=L.HASHES[p["hash"]]),
                                   inputs["ops"], inputs["tokens"], p, mod.NoFreeBlocks)
            except RuntimeError:
                caught.append(c.name)
                break
            if not torch.equal(got, L.model_trace(inputs, p)):
                caught.append(c.name)
                break
    assert caught, f"no block_manager case catches: {mutant}"


# ---- the spec: attention inputs and reference ---------------------------------------------------------------

def test_attention_inputs_hide_nan_where_a_kernel_must_not_look():
    p = L.attn("paged_decode", 4, 8, 2, 64, 16, "fp32", lens=(1, 16, 17, 40))
    a, b = make(SPEC, p, 9, "cpu"), make(SPEC, p, 9, "cpu")
    for k in a:
        assert torch.equal(a[k].view(torch.uint8) if a[k].is_floating_point() else a[k],
                           b[k].view(torch.uint8) if b[k].is_floating_point() else b[k]), k
    kc, tables, lens = a["k_cache"], a["block_tables"].long(), a["seq_lens"].tolist()
    page = kc.shape[1]
    used = set()
    for i, n in enumerate(lens):
        pages = -(-n // page)
        blocks = tables[i, :pages]
        used |= set(blocks.tolist())
        k = kc[blocks].reshape(-1, *kc.shape[2:])
        assert torch.isfinite(k[:n]).all() and torch.isnan(k[n:]).all(), "slots past the length hold NaN"
        assert torch.isnan(kc[tables[i, pages:]]).all(), "table entries past the last block point at NaN blocks"
    spare = sorted(set(range(kc.shape[0])) - used)
    assert len(spare) >= 3 and torch.isnan(kc[spare]).all() and torch.isnan(a["v_cache"][spare]).all()
    flat = tables[3, :3].tolist()
    assert flat != list(range(flat[0], flat[0] + 3)), "physical blocks are shuffled"
    assert torch.isfinite(SPEC.reference(a, p)).all()
    assert a["q"].std(dim=-1).min() > 0.1


def test_layouts_give_strided_views():
    p = L.attn("paged_decode", 3, 4, 2, 64, 16, "fp32", lens=(5, 16, 33), layout="kv")
    a = make(SPEC, p, 1, "cpu")
    assert a["k_cache"].stride(0) == 2 * a["k_cache"][0].numel() and not a["k_cache"].is_contiguous()
    p = L.attn("paged_decode", 3, 4, 2, 64, 16, "fp32", lens=(5, 16, 33), layout="qkv")
    q = make(SPEC, p, 1, "cpu")["q"]
    assert q.stride(0) == (4 + 2 * 2) * 64 and not q.is_contiguous()


@pytest.mark.parametrize("p", [L.attn("paged_decode", 3, 8, 2, 64, 16, "fp32", lens=(1, 17, 40)),
                               L.attn("paged_decode", 2, 4, 4, 64, 8, "fp32", lens=(9, 24), scale=0.3)],
                         ids=["gqa4", "mha-scale"])
def test_reference_and_gather_sdpa_agree_with_a_plain_loop(p):
    """The fp64 reference against a per-(sequence, head) loop written from the definition, and the
    gather + SDPA baseline (never checked by the grader) against both."""
    inputs = make(SPEC, p, 2, "cpu")
    ref = SPEC.reference(inputs, p)
    q, kc, vc, tables, lens = L._attn_args(inputs)
    page, kvh, d = kc.shape[1], kc.shape[2], kc.shape[3]
    scale = p.get("scale") or d ** -0.5
    for b, n in enumerate(lens.tolist()):
        for h in range(q.shape[1]):
            g = h // (q.shape[1] // kvh)
            ks = torch.stack([kc[tables[b, t // page], t % page, g] for t in range(n)]).double()
            vs = torch.stack([vc[tables[b, t // page], t % page, g] for t in range(n)]).double()
            w = torch.softmax(ks @ q[b, h].double() * scale, 0)
            torch.testing.assert_close(ref[b, h], w @ vs, rtol=1e-10, atol=1e-12)
    base = SPEC.baselines["gather_sdpa"](inputs, p)
    assert compare(base, ref, SPEC.tolerances["fp32"]).ok


def test_bytes_moved_and_copy_baseline():
    p = L.attn("paged_decode", **L.BENCH_SHAPE)
    assert SPEC.bytes_moved(p) == 2 * 32 * 4096 * 8 * 128 * 2 == 536870912
    small = L.attn("paged_decode", 2, 4, 2, 64, 16, "fp32", lens=(3, 20))
    out = SPEC.baselines["copy"](make(SPEC, small, 0, "cpu"), small)
    assert 2 * out.numel() * out.element_size() == SPEC.bytes_moved(small) == 2 * 23 * 2 * 64 * 4


def test_benchmarks():
    names = {b.name: b for b in SPEC.benchmarks}
    for e in ATTN:
        copy = names[f"{e}-bf16-b32-h32kv8-d128-page16-ctx4096-copy"]
        assert copy.tiers[-1].min_ratio == 0.7 and copy.tiers[-1].fraction == 1.0 and copy.points > 0
        sdpa = names[f"{e}-bf16-b32-h32kv8-d128-page16-ctx4096-gather_sdpa"]
        assert sdpa.tiers[-1].min_ratio == 1.0 and sdpa.baseline == "gather_sdpa"
        info = names[f"{e}-bf16-b4-h32kv8-d128-page16-ctx16384-copy"]
        assert info.points == 0 and info.tiers[0].min_ratio == 0.0
    for b in SPEC.benchmarks:
        assert b.params["dtype"] == "bf16" and b.params["lens_kind"] == "full"


LIBRARY_KERNELS = ["void pytorch_flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false>>",
                   "fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "cudnn_generated_fort_native_sdpa_sm90_flash_fprop",
                   "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "nvjet_hsh_128x128_64x4_1x2_h_bz_NNN",
                   "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<...>>",
                   "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int>",
                   "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, float, float, float>"]
ALLOWED_KERNELS = ["paged_decode_kernel", "paged_decode_split_kernel", "paged_decode_reduce_kernel",
                   "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
                   "Memset (Device)", "Memcpy DtoD (Device -> Device)"]


def test_forbidden_kernel_patterns_hit_library_kernels_only():
    def hit(name):
        return [f for f in SPEC.forbidden_kernels if re.search(f, name, re.I)]
    for k in LIBRARY_KERNELS:
        assert hit(k), f"not forbidden: {k}"
    for k in ALLOWED_KERNELS:
        assert not hit(k), f"{k} is forbidden by {hit(k)}"


def test_no_solution_text_ships_with_the_lab():
    """What `labs release` checks, for this lab: no run of solution lines, no kernel body, in the skeletons,
    the notebook, the README or the spec."""
    from grader.instructor import code_text, find_leaks
    shipped = [*(SKEL_DIR.iterdir()), REPO_ROOT / "grader" / "labs" / "lab06_paged_kv.py"]
    edition = {str(f.relative_to(REPO_ROOT)): code_text(f.name, f.read_bytes()) for f in shipped if f.is_file()}
    solutions = {f"{SPEC.path}/{f.name}": f.read_text() for f in SOL_DIR.iterdir() if f.is_file()}
    assert find_leaks(edition, solutions) == []


# ---- the solutions --------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(solutions):
    r = solutions
    assert r.tier == "cpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert r.passed and r.env["worker_restarts"] == 0
    assert r.max_score == len(CPU_CASES) * SPEC.correctness_points == r.score


def test_solutions_plan(solutions):
    names = [c.name for c in solutions.checks]
    expected = ["files"]
    for e in ENTRIES:
        expected += [f"{e}[audit]"] + [f"{e}[{c.name}]" for c in CPU_CASES if c.entry == e]
    expected += [f"speed[{b.name}]" for b in SPEC.benchmarks]
    assert names == expected


@pytest.mark.parametrize("case", [f"{c.entry}[{c.name}]" for c in CPU_CASES if c.entry != "block_manager"])
def test_solution_attention_is_well_inside_tolerance(solutions, case):
    c = check(solutions, case)
    assert c.status == "pass" and c.message.startswith("2 trial(s)"), c.message
    assert c.details["rel_err"] < (1e-6 if "[fp32" in case or "-fp32-" in case else 1e-3), c.details


def test_solutions_audit_passes_and_speed_is_not_graded_without_gpu(solutions):
    for e in ENTRIES:
        c = check(solutions, f"{e}[audit]")
        assert c.status == "pass" and "no forbidden op" in c.message, c.message
    speed = [c for c in solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks)
    assert all(c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message for c in speed)


def test_split_plan_covers_the_context():
    pa = import_file(SOL_DIR / "paged_attention.py")
    for batch, kvh, ctx, splits in ((32, 8, 4096, None), (4, 8, 16384, None), (1, 1, 17, None), (3, 2, 100, 3),
                                    (2, 2, 64, 1)):
        n, tokens = pa.split_plan(batch, kvh, ctx, torch.device("cpu"), splits)
        assert n >= 1 and tokens % pa.SPLIT_ALIGN == 0 and (n - 1) * tokens < ctx <= n * tokens, (batch, ctx, n, tokens)
        if splits:
            assert n <= splits


COMPILE_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("paged_sm90", sys.argv[1])
    R = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(R)
    common = dict(q_ptr="*D", k_cache_ptr="*D", v_cache_ptr="*D", block_tables_ptr="*i32", seq_lens_ptr="*i32",
                  stride_qb="i32", stride_qh="i32", stride_kb="i32", stride_ks="i32", stride_kh="i32",
                  stride_vb="i32", stride_vs="i32", stride_vh="i32", stride_tb="i32", qk_scale="fp32")
    sigs = {"paged_decode_kernel": dict(common, o_ptr="*D", stride_ob="i32", stride_oh="i32", max_context="i32"),
            "paged_decode_split_kernel": dict(common, part_o_ptr="*fp32", part_lse_ptr="*fp32",
                                              tokens_per_split="i32", num_splits="i32")}
    for name, sig in sigs.items():
        fn = getattr(R, name).fn
        for cfg in R._configs()[:2]:
            for dt, d, group, page in (("bf16", 128, 4, 16), ("fp16", 64, 8, 32)):
                consts = dict(GROUP=group, BLOCK_G=16, HEAD_DIM=d, PAGE_SIZE=page, INPUT_PRECISION="tf32", **cfg.kwargs)
                s = {k: v.replace("D", dt) for k, v in sig.items()}
                s.update({k: "constexpr" for k in consts})
                s = {a: s[a] for a in fn.arg_names}
                attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in s.items()
                         if t.startswith("*") or (t == "i32" and a.startswith("stride_") and a != "stride_tb")}
                src = triton.compiler.ASTSource(fn=fn, signature=s, constexprs=consts, attrs=attrs)
                k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                   options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                ptx = k.asm["ptx"]
                assert k.asm.get("cubin") and "cp.async" in ptx and "mma" in ptx, name
                assert k.metadata.shared <= 232448, (name, k.metadata.shared)
                print(name, dt, d, "ok")
    s = dict(part_o_ptr="*fp32", part_lse_ptr="*fp32", seq_lens_ptr="*i32", o_ptr="*bf16", stride_ob="i32",
             stride_oh="i32", tokens_per_split="i32", num_splits="i32", HEAD_DIM="constexpr", SPLITS="constexpr")
    src = triton.compiler.ASTSource(fn=R.paged_decode_reduce_kernel, signature=s,
                                    constexprs=dict(HEAD_DIM=128, SPLITS=4))
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm.get("cubin")
    print("paged_decode_reduce_kernel ok")
''')


def test_solution_kernels_compile_for_sm90():
    """The interpreter never compiles a kernel: compile both kernels (two autotune configs, bf16 d128 and
    fp16 d64) and the reduce for an H100 with the specialization a run gets, and check they use tensor cores
    (mma) with asynchronous (cp.async) prefetch of the gathered K/V tiles."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(SOL_DIR / "paged_attention.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 9


# ---- the skeleton ---------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group in ("audit", "correctness")]
    assert len(graded_checks) == len(ENTRIES) + len(CPU_CASES)
    todo = {"block_manager": "lab06: BlockManager.can_allocate", "paged_decode": "lab06: paged_decode_kernel",
            "paged_decode_split": "lab06: paged_decode_split_kernel and paged_decode_reduce_kernel"}
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert f"NotImplementedError: {todo[c.entry]}" in c.message, f"{c.name}: {c.message}"
        assert "Traceback" not in c.message
    assert check(r, "files").status == "pass"
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_block_manager_names_each_todo():
    bm = import_file(SKEL_DIR / "block_manager.py")
    m = bm.BlockManager(8, 4)
    assert m.num_free_blocks == 8 and m.ref_count(3) == 0          # the given state works
    for call, name in ((lambda: m.can_allocate([1]), "can_allocate"), (lambda: m.allocate(1, [1]), "allocate"),
                       (lambda: m.can_append(1), "can_append"), (lambda: m.append(1, 2), "append"),
                       (lambda: m.fork(1, 2), "fork"), (lambda: m.free(1), "free")):
        with pytest.raises(NotImplementedError, match=f"lab06: BlockManager.{name} "):
            call()


def test_skeleton_keeps_the_given_parts_of_the_solution():
    """Wrappers, configs, the given block-manager state: identical in both files but for the raise lines."""
    def given_attention(text):
        configs = text.split("INTERPRET = ")[1].split("# ---- paged decode")[0]
        wrappers = text.split("# ---- wrappers (given)")[1]
        return configs, re.sub(r"    raise NotImplementedError\(.*?\)\n", "", wrappers, flags=re.S)

    def given_bm(text):
        return text.split('"""\n', 1)[0], text.split("# ---- helpers")[0].split('"""', 2)[2]
    for name, given in (("paged_attention.py", given_attention), ("block_manager.py", given_bm)):
        assert given((SKEL_DIR / name).read_text()) == given((SOL_DIR / name).read_text()), name


# ---- known-bad submissions ----------------------------------------------------------------------------

def grade_exploit(name, *only):
    from grader.runner import grade
    r = grade(LAB, exploit_dir(LAB, name), cpu=True, only=list(only))
    assert r.tier == "cpu"
    return r


EXPLOITS = {"fork_without_refcount": "block_manager.py", "partial_allocation": "block_manager.py",
            "hash_only_prefix_hit": "block_manager.py", "ignores_block_table": "paged_attention.py",
            "reads_nan_padding": "paged_attention.py", "cached_output": "paged_attention.py",
            "calls_sdpa": "paged_attention.py", "gathers_with_torch": "paged_attention.py",
            "reduce_reads_unwritten_splits": "paged_attention.py"}


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(EXPLOITS)
    for n, f in EXPLOITS.items():
        readme = (root / n / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "GRADING_THREATS.md row" in readme[0] and "Caught" in readme[1], f"{n}: {readme}"
        src = (root / n / f).read_text()
        assert src.startswith('"""KNOWN-BAD SUBMISSION')
        compile(src, str(root / n / f), "exec")


BM_TIGHT = "block_manager[bs4-nb10-seqs4x5-ops200]"
BM_WEAK = "block_manager[bs4-nb16-seqs4x6-ops200-weakhash]"
BM_DEFAULT = "block_manager[bs4-nb16-seqs4x6-ops160]"


def test_fork_without_refcount_fails_every_trace():
    r = grade_exploit("fork_without_refcount", BM_DEFAULT, BM_TIGHT, BM_WEAK)
    for name in (BM_DEFAULT, BM_TIGHT, BM_WEAK):
        assert_rejected(check(r, name), "elements wrong", "row i = after op i")


def test_partial_allocation_fails_on_tight_pools():
    r = grade_exploit("partial_allocation", BM_TIGHT, "block_manager[bs1-nb12")
    assert_rejected(check(r, BM_TIGHT), "elements wrong")
    assert_rejected(check(r, "block_manager[bs1-nb12-seqs4x8-ops150]"), "elements wrong")


def test_hash_only_prefix_hit_fails_the_weak_hash_only():
    r = grade_exploit("hash_only_prefix_hit", BM_DEFAULT, "weakhash")
    assert check(r, BM_DEFAULT).status == "pass"
    assert_rejected(check(r, BM_WEAK), "elements wrong")
    assert_rejected(check(r, "block_manager[bs2-nb9-seqs3x6-ops250-weakhash]"), "elements wrong")


ONE_PAGE = "fp16-b3-h4kv4-d64-page8-lens8,9,40"
RAGGED = "fp32-b5-h4kv2-d64-page16-lens1,16,17,48,29"


def test_ignores_block_table_fails_multi_block_sequences():
    r = grade_exploit("ignores_block_table", RAGGED, "-kv]")
    for e in ATTN:
        assert_rejected(check(r, f"{e}[{RAGGED}]"), "elements wrong")
        # Here the contiguous guess runs past the cache's last block: the interpreter reads whatever lies
        # there (wrong values) or faults on unmapped memory (the worker dies: CI saw SIGSEGV once). Either is
        # a rejection with a clear message; which one happens depends on the allocator, not on the grader.
        c = check(r, f"{e}[fp32-b3-h4kv2-d64-page16-lens5,16,33-kv]")
        assert_rejected(c)
        assert "elements wrong" in c.message or "student process died" in c.message, c.message


def test_reads_nan_padding_returns_nan():
    r = grade_exploit("reads_nan_padding", RAGGED, ONE_PAGE)
    for e in ATTN:
        for case in (RAGGED, ONE_PAGE):
            assert_rejected(check(r, f"{e}[{case}]"), "got nan", "0 * NaN")


def test_cached_output_is_caught_by_fresh_inputs():
    r = grade_exploit("cached_output", RAGGED, ONE_PAGE)
    for case in (RAGGED, ONE_PAGE):
        assert_rejected(check(r, f"paged_decode[{case}]"), "elements wrong")
        assert check(r, f"paged_decode_split[{case}]").status == "pass"       # only the first entry cheats


def test_calls_sdpa_is_blocked_and_scores_nothing():
    r = grade_exploit("calls_sdpa", "[audit]", RAGGED)
    for e in ATTN:
        for name in (f"{e}[audit]", f"{e}[{RAGGED}]"):
            assert_rejected(check(r, name), "scaled_dot_product", "is not allowed in this lab")


def test_gathers_with_torch_fails_the_audit():
    r = grade_exploit("gathers_with_torch", "[audit]", RAGGED)
    for e in ATTN:
        assert_rejected(check(r, f"{e}[audit]"), "aten::index", "your own kernel")
        c = check(r, f"{e}[{RAGGED}]")
        assert c.status == "pass" and c.points == 0 and "0 points: the kernel audit found aten::index" in c.message


def test_reduce_reads_unwritten_splits_fails_split_only():
    r = grade_exploit("reduce_reads_unwritten_splits", RAGGED, "splits3")
    assert check(r, f"paged_decode[{RAGGED}]").status == "pass"
    assert_rejected(check(r, f"paged_decode_split[{RAGGED}]"), "got nan", "split reduce")
    assert_rejected(check(r, "paged_decode_split[fp16-b4-h8kv2-d64-page16-lens1,40,64,17-splits3]"), "got nan")


# ---- GPU tier (run on a GPU) --------------------------------------------------------------------------

@requires_cuda
def test_gpu_solutions_pass_bf16_cases():
    from grader.runner import grade
    r = grade(LAB, "solutions", only=["[audit]", "bf16-b6-h32kv8-d128", "bf16-b5-h32kv8-d128-page16-lens",
                                      "bf16-b32-h32kv8-d128-page16-full4096", "block_manager[bs4-nb16"])
    assert r.tier == "gpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert len([c for c in r.checks if c.group == "correctness"]) >= 7


@requires_cuda
def test_gpu_gather_sdpa_baseline_computes_attention():
    for p in (L.attn("paged_decode", 4, 32, 8, 128, 16, "bf16", ctx=1000), L.attn("paged_decode", 2, 32, 8, 128, 16,
                                                                                   "bf16", ctx=512, lens_kind="full")):
        inputs = make(SPEC, p, 0, "cuda")
        assert compare(SPEC.baselines["gather_sdpa"](inputs, p), SPEC.reference(inputs, p), SPEC.tolerances["bf16"]).ok
