"""Lab 05 (KV cache) on the CPU tier: the spec and its fp64 reference are sound (against the lab's model and
against Hugging Face transformers' LlamaForCausalLM built from the same config and weights), the solution
passes, the skeleton fails cleanly, and every known-bad submission in tests/adversarial/lab05/ is rejected
for the right reason (the one that is only slow, on the GPU).

Full solution and skeleton runs are graded once per session (the `graded` fixture in conftest.py); each
exploit grades only the checks it needs (`only=`).
"""

from __future__ import annotations

import importlib
import math
import re

import pytest
import torch

from grader import REPO_ROOT
from grader.compare import compare
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file
from grader.runner import grade
from grader.spec import Tolerance
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab05"
SPEC = get(LAB)
M = importlib.import_module("grader.labs.lab05_kv_cache")     # configs, case builders, Reference, baseline
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
TODO_OF = {"decode": "generate", "generate": "generate", "sample": "sample"}   # what a skeleton entry hits first
SOLUTION_DIR = REPO_ROOT / "solutions" / SPEC.path
FP32 = Tolerance(rtol=1e-5, atol_rms=1e-5)


@pytest.fixture(scope="module")
def solutions(graded):
    return graded(LAB, "solutions", cpu=True)


@pytest.fixture(scope="module")
def skeleton(graded):
    return graded(LAB, "student", cpu=True)


@pytest.fixture(scope="module")
def llama():
    return M.given_model()


@pytest.fixture(scope="module")
def solution():
    return import_file(SOLUTION_DIR / "kv_cache.py", REPO_ROOT / SPEC.path)


def assert_rejected(c, *needles: str):
    assert c.status == "fail", f"{c.name} was not rejected: {c.status}: {c.message}"
    assert c.points == 0
    for n in needles:
        assert n.lower() in c.message.lower(), f"{c.name}: expected {n!r} in: {c.message}"


def weights_of(inputs):
    return {n: inputs[n] for n in M.WEIGHT_NAMES}


def model_of(llama, inputs, c):
    return llama.Llama(llama.LlamaConfig(**c), weights_of(inputs))


def ratio(c):
    return c["n_heads"] // c["n_kv_heads"]


# ---- the spec -----------------------------------------------------------------------------------------

def test_cases_cover_gqa_ratios_padding_and_sampling():
    dec = [c for c in SPEC.all_cases(0) if c.entry == "decode"]
    for tier in ("cpu", "gpu"):
        here = [c for c in dec if tier in c.tiers]
        assert {1, 4, 8} <= {ratio(c.params["cfg"]) for c in here}, tier
        assert any(c.params["nan_pad"] and c.params["min_len"] < c.params["T"] for c in here), tier
    cpu = [c.params for c in dec if "cpu" in c.tiers]
    assert any(p["min_len"] == p["T"] for p in cpu), "an equal-length batch (no padding)"
    assert any(p["T"] == 1 for p in cpu) and any(p["N"] == 1 for p in cpu), "a one-token prompt; prefill only"
    assert any(not p["tight"] for p in cpu) and any(not p["nan_pad"] and p["min_len"] < p["T"] for p in cpu)
    gpu = [c.params for c in dec if c.tiers == ("gpu",)]
    assert {"fp32", "bf16"} <= {p["dtype"] for p in gpu} and max(p["T"] for p in gpu) >= 700
    temps = {c.params["temperature"] for c in CPU_CASES if c.entry in ("generate", "sample")}
    assert 0.0 in temps and 1.0 in temps and len(temps - {0.0, 1.0}) >= 2
    for c in SPEC.all_cases(123) + [M.Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
        p = c.params
        if p["entry"] != "sample":
            assert p["T"] + p["N"] <= p["cfg"]["max_seq_len"], c.name


def test_inputs_are_deterministic_and_nan_only_where_padding_is():
    p = M.decode(M.TINY[4], 5, 13, 6)
    a, b = make(SPEC, p, 7, "cpu"), make(SPEC, p, 7, "cpu")
    for k in a:
        assert torch.equal(a[k].view(torch.uint8) if a[k].is_floating_point() else a[k],
                           b[k].view(torch.uint8) if b[k].is_floating_point() else b[k]), k
    lens, prompt = a["prompt_lens"], a["prompt"]
    assert int(lens.max()) == 13 and int(lens.min()) >= 1
    nan_rows = torch.isnan(a["embed"]).any(-1).nonzero().flatten().tolist()
    assert len(nan_rows) == 1 and torch.isnan(a["embed"][nan_rows[0]]).all()
    pad = nan_rows[0]
    padding = torch.arange(13)[None, :] >= lens[:, None]
    assert (prompt[padding] == pad).all() and not (prompt[~padding] == pad).any()
    assert not (a["forced"] == pad).any()
    for name in M.WEIGHT_NAMES:
        if name != "embed":
            assert torch.isfinite(a[name]).all() and a[name].std() > 0, name
    finite = make(SPEC, M.decode(M.TINY[4], 5, 13, 6, nan_pad=False), 7, "cpu")
    assert torch.isfinite(finite["embed"]).all()
    for seed in range(5):       # "loose": the padded width is nobody's length
        assert int(make(SPEC, M.decode(M.TINY[4], 6, 9, 2, tight=False), seed, "cpu")["prompt_lens"].max()) < 9


def test_rope_table_is_the_models_bit_for_bit(llama):
    for hd, theta, n in ((16, 10000.0, 256), (64, 10000.0, 2048), (64, 500000.0, 8192)):
        for mine, theirs in zip(M.rope_tables(hd, theta, n), llama.rope_tables(hd, theta, n)):
            assert torch.equal(mine, theirs)


@pytest.mark.parametrize("r", [1, 4, 8])
def test_reference_is_the_given_model_in_higher_precision(llama, r):
    """The fp32 model (full forward, right-padded batch with NaN padding) agrees with the fp64 reference run
    row by row without padding: same architecture, same RoPE layout, padding never leaks."""
    c = M.TINY[r]
    p = M.decode(c, 4, 19, 2)
    inputs = make(SPEC, p, 11, "cpu")
    lens = inputs["prompt_lens"]
    valid = torch.arange(19)[None, :] < lens[:, None]
    with torch.no_grad():
        got = model_of(llama, inputs, c)(inputs["prompt"], valid=valid)
    ref = M.Reference(inputs, c)
    for b in range(4):
        n = int(lens[b])
        cmp = compare(got[b, :n], ref.logits(inputs["prompt"][b, :n], slice(None)), FP32)
        assert cmp.ok, f"row {b}: {cmp.message}"


def _hf_model(c, inputs):
    transformers = pytest.importorskip("transformers")
    hd = M.head_dim(c)
    cfg = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["dim"], intermediate_size=c["ffn_dim"],
        num_hidden_layers=c["n_layers"], num_attention_heads=c["n_heads"], num_key_value_heads=c["n_kv_heads"],
        head_dim=hd, max_position_embeddings=c["max_seq_len"], rms_norm_eps=c["norm_eps"],
        rope_theta=c["rope_theta"], tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        hidden_act="silu", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    sd = {"model.embed_tokens.weight": inputs["embed"], "model.norm.weight": inputs["norm"],
          "lm_head.weight": inputs["lm_head"]}
    names = {"self_attn.q_proj": "wq", "self_attn.k_proj": "wk", "self_attn.v_proj": "wv", "self_attn.o_proj": "wo",
             "mlp.gate_proj": "w_gate", "mlp.up_proj": "w_up", "mlp.down_proj": "w_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    for i in range(c["n_layers"]):
        for hf_name, ours in names.items():
            sd[f"model.layers.{i}.{hf_name}.weight"] = inputs[ours][i]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    # HF computes theta^(-2i/d) in fp32 (1 ulp from the lab's fp64-then-rounded values): use the lab's.
    inv_freq = (1.0 / c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)).float()
    assert hf.model.rotary_emb.inv_freq.shape == inv_freq.shape
    hf.model.rotary_emb.inv_freq.copy_(inv_freq)
    return hf


@pytest.mark.parametrize("r", [1, 4, 8])
def test_hugging_face_llama_agrees_with_the_model_and_the_reference(llama, r):
    """transformers.LlamaForCausalLM built from the same config with the same weights (no download): its
    logits match the lab's model and the grader's fp64 reference (fp32, right-padded batch)."""
    c = M.TINY[r]
    inputs = make(SPEC, M.decode(c, 3, 21, 2, nan_pad=False), 5, "cpu")
    hf = _hf_model(c, inputs)
    lens = inputs["prompt_lens"]
    valid = torch.arange(21)[None, :] < lens[:, None]
    with torch.no_grad():
        theirs = hf(input_ids=inputs["prompt"], attention_mask=valid.long()).logits
        ours = model_of(llama, inputs, c)(inputs["prompt"], valid=valid)
    ref = M.Reference(inputs, c)
    for b in range(3):
        n = int(lens[b])
        want = ref.logits(inputs["prompt"][b, :n], slice(None))
        for name, got in (("transformers", theirs), ("llama.py", ours)):
            cmp = compare(got[b, :n], want, FP32)
            assert cmp.ok, f"{name}, row {b}: {cmp.message}"


def test_hugging_face_greedy_generation_gives_the_solutions_tokens(llama, solution):
    """HF's generate() (its own KV cache) and the lab's solution pick the same greedy tokens."""
    c = M.TINY[4]
    p = M.gen_case(c, 3, 12, 10, 0.0, min_len=12)       # equal lengths: HF needs no padding convention
    inputs = make(SPEC, p, 2, "cpu")
    hf = _hf_model(c, inputs)
    with torch.no_grad():
        theirs = hf.generate(input_ids=inputs["prompt"], attention_mask=torch.ones_like(inputs["prompt"]),
                             max_new_tokens=10, do_sample=False, min_new_tokens=10)[:, 12:]
        ours, _ = solution.generate(model_of(llama, inputs, c), inputs["prompt"], inputs["prompt_lens"], 10)
    assert torch.equal(theirs, ours)
    assert torch.equal(ours, M.reference(inputs, p)[0])


def test_teacher_forced_reference_is_the_growing_full_forward():
    """The decode reference takes every step from one forward over prompt + continuation (causality); check
    it against literally recomputing the growing sequence, step by step."""
    c = M.TINY[8]
    p = M.decode(c, 3, 9, 5)
    inputs = make(SPEC, p, 4, "cpu")
    fast = M.reference(inputs, p)
    ref = M.Reference(inputs, c)
    for b in range(3):
        seq = inputs["prompt"][b, :int(inputs["prompt_lens"][b])]
        for t in range(5):
            torch.testing.assert_close(fast[b, t], ref.logits(seq, -1), rtol=1e-12, atol=1e-12)
            seq = torch.cat((seq, inputs["forced"][b, t:t + 1]))


@pytest.mark.parametrize("case", [c for c in CPU_CASES if c.entry in ("generate", "sample")], ids=lambda c: c.name)
def test_sampled_inputs_have_no_near_ties(case):
    """Tokens are compared exactly, so no step's top two scores may be within fp32 rounding of each other."""
    p = case.params
    for seed in (0, 1):
        inputs = make(SPEC, p, seed, "cpu")
        gaps = []
        if p["entry"] == "sample":
            z = inputs["logits"].double()
            s = z / p["temperature"] + inputs["gumbel"].double() if p["temperature"] > 0 else z
            _, gap, thresh = M._margin(s)
            gaps.append((gap / thresh).min().item())
        else:
            M._trajectory(inputs, p, lambda b, t, s: gaps.append((M._margin(s)[1] / M._margin(s)[2]).item()))
        assert min(gaps) >= 1.0, (case.name, seed, min(gaps))


def test_recompute_baseline_computes_the_same_logits():
    """A baseline's output is never checked by the grader: check here that it decodes the same thing."""
    p = M.decode(M.TINY[4], 3, 15, 6)
    inputs = make(SPEC, p, 9, "cpu")
    cmp = compare(SPEC.baselines["recompute"](inputs, p), M.reference(inputs, p), FP32)
    assert cmp.ok, cmp.message


def test_benchmark_is_long_context_bf16_with_a_physical_floor():
    (b,) = SPEC.benchmarks
    p = b.params
    assert (b.entry, b.baseline, p["dtype"], p["B"], p["T"], p["N"]) == ("decode", "recompute", "bf16", 16, 4096, 32)
    assert [t.min_ratio for t in b.tiers] == [2.0, 3.0, 3.5, 4.0] and b.tiers[-1].fraction == 1.0
    weights_bytes = 2 * (M._non_embedding_params(p["cfg"]) + p["cfg"]["dim"] * p["cfg"]["vocab_size"])
    assert SPEC.bytes_moved(p) >= p["N"] * weights_bytes
    from grader.hardware import floor_ms
    floor = floor_ms("NVIDIA H100 80GB HBM3", SPEC.flops(p), SPEC.bytes_moved(p), "tensor_bf16")
    # 16 x ~3600 prompt tokens through ~90M parameters: ~14 TFLOP, ~14 ms; the solution takes ~7x that
    assert 8.0 < floor < 25.0, floor


# ---- the given model ----------------------------------------------------------------------------------

def test_masked_attention_paths_agree_with_causal_attention(llama):
    """The two attention paths a cache can drive (explicit mask, and the grouped-query decode path that reads
    K/V in place) compute what causal attention computes."""
    g = torch.Generator().manual_seed(0)
    for kvh in (8, 2, 1):
        q = torch.randn(2, 8, 6, 16, generator=g)
        k, v = torch.randn(2, kvh, 6, 16, generator=g), torch.randn(2, kvh, 6, 16, generator=g)
        want = llama.causal_attention(q, k, v)
        mask = (torch.arange(6)[None, :] <= torch.arange(6)[:, None]).expand(2, 1, 6, 6)
        torch.testing.assert_close(llama.masked_attention(q, k, v, mask), want, rtol=1e-5, atol=1e-6)
        last = llama.masked_attention(q[:, :, -1:], k, v, torch.ones(2, 1, 1, 6, dtype=torch.bool))
        torch.testing.assert_close(last, want[:, :, -1:], rtol=1e-5, atol=1e-6)


def test_config_validates_and_counts_kv_bytes(llama):
    for bad in (dict(dim=100, n_heads=8), dict(n_heads=8, n_kv_heads=3), dict(dim=24, n_heads=8, n_kv_heads=8)):
        with pytest.raises(ValueError):
            llama.LlamaConfig(**bad)
    # Llama-3-8B: 32 layers, 8 KV heads of 128: 128 KiB per token in bf16
    c = llama.LlamaConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336)
    assert c.kv_bytes_per_token(2) == 131072 and c.group_size == 4
    assert abs(c.n_params() / 8.03e9 - 1) < 0.01


# ---- the solutions ------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(solutions):
    r = solutions
    assert r.tier == "cpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert r.passed and r.env["worker_restarts"] == 0
    assert r.max_score == len(CPU_CASES) * SPEC.correctness_points == r.score


def test_solutions_plan(solutions):
    names = [c.name for c in solutions.checks]
    expected = ["files"]
    for e in SPEC.entries:
        expected += [f"{e}[{c.name}]" for c in CPU_CASES if c.entry == e]
    expected += [f"speed[{b.name}]" for b in SPEC.benchmarks]
    assert names == expected


@pytest.mark.parametrize("case", [f"{c.entry}[{c.name}]" for c in CPU_CASES])
def test_solutions_case_is_well_inside_tolerance(solutions, case):
    c = check(solutions, case)
    assert c.status == "pass" and c.message.startswith("2 trial(s)"), c.message
    assert c.details["rel_err"] < 2e-6, c.details       # fp32 logits: ~5e-7 (Frobenius); tokens: exactly 0


def test_solutions_speed_is_not_graded_without_gpu(solutions):
    (c,) = [c for c in solutions.checks if c.group == "speed"]
    assert c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message


def test_solution_decode_reads_only_the_filled_slots(llama, solution):
    """The cached decode neither recomputes the prompt nor attends the whole max_len buffer: each step's
    attention sees the slots filled so far (plus the new one), whatever max_len is."""
    c = M.TINY[4]
    inputs = make(SPEC, M.decode(c, 2, 10, 4), 0, "cpu")
    model = model_of(llama, inputs, c)
    seen = []

    class Spy(solution.KVCache):
        def update(self, layer, k, v, positions):
            out = super().update(layer, k, v, positions)
            if layer == 0:
                seen.append((k.shape[2], out[0].shape[2]))
            return out

    cache = Spy(model.cfg, 2, 1000, "cpu", torch.float32)
    with torch.no_grad():
        solution.prefill(model, cache, inputs["prompt"], inputs["prompt_lens"])
        for t in range(3):
            solution.decode_one_token(model, cache, inputs["forced"][:, t], inputs["prompt_lens"] + t)
    assert seen == [(10, 10), (1, 11), (1, 12), (1, 13)]


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group == "correctness"]
    assert len(graded_checks) == len(CPU_CASES)
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert c.message.startswith(f"NotImplementedError: lab05: {TODO_OF[c.entry]}"), f"{c.name}: {c.message}"
        assert "Traceback" not in c.message
    assert check(r, "files").status == "pass"
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_imports_and_every_todo_names_itself(llama):
    mod = import_file(REPO_ROOT / SPEC.path / "kv_cache.py", REPO_ROOT / SPEC.path)
    cfg = llama.LlamaConfig()
    x = torch.zeros(1, dtype=torch.long)
    calls = {"KVCache.__init__": lambda: mod.KVCache(cfg, 1, 4, "cpu", torch.float32),
             "KVCache.update": lambda: mod.KVCache.update(None, 0, None, None, None),
             "prefill": lambda: mod.prefill(None, None, x[None], x + 1),
             "decode_one_token": lambda: mod.decode_one_token(None, None, x, x),
             "sample": lambda: mod.sample(torch.zeros(1, 4), 0.0),
             "generate": lambda: mod.generate(None, x[None], x + 1, 1)}
    for name, fn in calls.items():
        with pytest.raises(NotImplementedError, match=f"^lab05: {name} "):
            fn()


# ---- known-bad submissions ----------------------------------------------------------------------------

EXPLOITS = {"recomputes_full_forward", "uninitialized_cache", "pads_not_masked", "ignores_lengths",
            "wrong_rope_offset", "cached_logits", "cache_in_fp16", "wrong_temperature"}
NANPAD = "decode[fp32-gqa4-L2d128h8kv2-b4t24n12-nanpad]"
RAGGED = "decode[fp32-gqa4-L2d128h8kv2-b3t20n7-ragged]"
EQUAL = "decode[fp32-gqa4-L2d128h8kv2-b5t17n9-equal]"
PREFILL_ONLY = "decode[fp32-gqa1-L2d128h8kv8-b3t20n1-nanpad]"


def grade_exploit(name, *only, cpu=True):
    r = grade(LAB, exploit_dir(LAB, name), cpu=cpu, only=list(only))
    assert r.tier == ("cpu" if cpu else "gpu")
    return r


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    names = {p.name for p in root.iterdir() if p.is_dir()}
    assert names == EXPLOITS
    for n in names:
        readme = (root / n / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "GRADING_THREATS.md row" in readme[0] and "Caught" in readme[1], readme
        src = (root / n / "kv_cache.py").read_text()
        assert src.startswith('"""KNOWN-BAD SUBMISSION')
        compile(src, str(root / n / "kv_cache.py"), "exec")


def test_recomputes_full_forward_is_correct_so_only_speed_can_catch_it():
    r = grade_exploit("recomputes_full_forward", NANPAD, RAGGED, "b4t16n12-ragged-temp0.7]", "speed[")
    for c in r.checks:
        if c.group == "correctness":
            assert c.status == "pass", f"{c.name}: {c.message}"
    (speed,) = [c for c in r.checks if c.group == "speed"]
    assert speed.status == "skip" and "no GPU" in speed.message


@requires_cuda
def test_recomputes_full_forward_fails_the_speed_tier_on_gpu():
    r = grade_exploit("recomputes_full_forward", "speed[", cpu=False)
    (speed,) = [c for c in r.checks if c.group == "speed"]
    assert_rejected(speed, "x recompute")
    assert speed.details["ratio"] < 2.0


def test_uninitialized_cache_leaks_nan_wherever_a_row_is_short():
    r = grade_exploit("uninitialized_cache", NANPAD, RAGGED, EQUAL, PREFILL_ONLY)
    for name in (NANPAD, RAGGED):
        assert_rejected(check(r, name), "got nan", "torch.empty")
    assert check(r, EQUAL).status == "pass"          # every slot a query may see has been written
    assert check(r, PREFILL_ONLY).status == "pass"   # no decode step, no unwritten slot


def test_pads_not_masked_fails_the_nan_padding_cases_only():
    r = grade_exploit("pads_not_masked", NANPAD, RAGGED, EQUAL, "-nanpad-loose]")
    assert_rejected(check(r, NANPAD), "got nan", "valid=")
    assert_rejected(check(r, "decode[fp32-gqa8-L2d128h8kv1-b6t11n8-nanpad-loose]"), "nan")
    assert check(r, RAGGED).status == "pass"         # finite padding: masked out, harmless
    assert check(r, EQUAL).status == "pass"


def test_ignores_lengths_fails_ragged_batches_from_the_first_step():
    r = grade_exploit("ignores_lengths", NANPAD, RAGGED, EQUAL, "b4t16n12-ragged-temp0]")
    for name in (NANPAD, RAGGED):
        assert_rejected(check(r, name), "elements wrong", "position len_b - 1")
    assert check(r, EQUAL).status == "pass"
    assert_rejected(check(r, "generate[fp32-gqa4-L2d128h8kv2-b4t16n12-ragged-temp0]"), "output 0:")


def test_wrong_rope_offset_fails_every_decode_step_not_the_prefill():
    r = grade_exploit("wrong_rope_offset", NANPAD, EQUAL, PREFILL_ONLY, "b1t1n8")
    for name in (NANPAD, EQUAL, "decode[fp32-gqa4-L2d128h8kv2-b1t1n8-equal]"):
        c = check(r, name)
        assert_rejected(c, "elements wrong")
        assert ", 1, " in c.message.split("first bad element at [")[1][:12], c.message   # step 1, not 0
    assert check(r, PREFILL_ONLY).status == "pass"


def test_cached_logits_is_caught_by_fresh_inputs():
    r = grade_exploit("cached_logits", NANPAD, EQUAL)
    for name in (NANPAD, EQUAL):
        assert_rejected(check(r, name), "trial 2/2", "elements wrong")


def test_cache_in_fp16_fails_the_fp32_tolerance():
    r = grade_exploit("cache_in_fp16", NANPAD, RAGGED, PREFILL_ONLY)
    for name in (NANPAD, RAGGED):
        c = check(r, name)
        assert_rejected(c, "elements wrong", "tolerance 1e-05")
        err = float(re.search(r"max abs err ([0-9.e+-]+)\. Hint", c.message).group(1))
        assert 1e-3 < err < 0.1, c.message      # fp16 rounding of K/V: ~100x the tolerance, nothing structural
    assert check(r, PREFILL_ONLY).status == "pass"


def test_wrong_temperature_fails_temperatures_other_than_one():
    r = grade_exploit("wrong_temperature", "sample[", "b4t16n12-ragged-temp0.7]")
    for t in ("0.5", "2"):
        assert_rejected(check(r, f"sample[fp32-b8-v1000-temp{t}]"), "elements wrong")
    assert_rejected(check(r, "generate[fp32-gqa4-L2d128h8kv2-b4t16n12-ragged-temp0.7]"), "output 0:")
    for t in ("0", "1"):
        assert check(r, f"sample[fp32-b8-v1000-temp{t}]").status == "pass"


def test_hidden_cases_follow_the_seed():
    a, b = SPEC.hidden_cases(1), SPEC.hidden_cases(2)
    assert [c.name for c in a] == [c.name for c in SPEC.hidden_cases(1)]
    assert [c.name for c in a] != [c.name for c in b]
    assert {c.entry for c in a} == {"decode", "generate"}
    for c in a + b:
        cfg = c.params["cfg"]
        assert cfg["n_heads"] % cfg["n_kv_heads"] == 0 and math.log2(ratio(cfg)).is_integer()
