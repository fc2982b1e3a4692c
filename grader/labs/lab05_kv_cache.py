"""Lab 05 spec: autoregressive decoding with a KV cache, on a small Llama-style model (stage2_llm/lab05_kv_cache).

The student writes the cache (prefill, then one token at a time, per-sequence lengths for ragged batches),
the decode loop and sampling in kv_cache.py; the model (llama.py) is given. Three entries:

    decode    generate(..., forced=...) with teacher forcing: the logits of every step of a known continuation.
              Reference: one fp64 full forward per sequence over prompt + continuation (causal attention
              makes position p's logits depend on tokens 0..p only, so every step is one row of it).
    generate  generate(...) sampling its own tokens (greedy, or Gumbel-max with the grader's noise): the
              tokens (exactly) and the logits of every step. Reference: an fp64 full forward of the
              growing sequence at every step.
    sample    sample(logits, temperature, gumbel) alone: the tokens, exactly.

Inputs: the model's weights (a dict of tensors, per-layer weights stacked, generated here from the seed),
right-padded prompts, their lengths, and the forced tokens or the noise. Padding is arbitrary tokens, or
(nan_pad cases) one token id whose embedding row is NaN and that appears nowhere else: a submission whose
real logits depend on padding in any way (a leaked 0 * NaN included) returns NaN.

Speed (GPU): decoding 32 tokens for 16 prompts of 3072-4096 tokens on a ~110M-parameter model (bf16),
against recomputing the full forward over the whole sequence for every new token.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage2_llm/lab05_kv_cache"
STUDENT_FILE = "kv_cache.py"
MODEL_FILE = "llama.py"
WEIGHT_NAMES = ("embed", "attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down", "norm",
                "lm_head")

ENTRIES = {
    "decode": EntryPoint("decode", (STUDENT_FILE,), "python",
                         "generate(model, prompt, prompt_lens, N, forced=forced) in kv_cache.py -> logits (B, N, V)"),
    "generate": EntryPoint("generate", (STUDENT_FILE,), "python",
                           "generate(model, prompt, prompt_lens, N, temperature, gumbel) -> (tokens (B, N), "
                           "logits (B, N, V))"),
    "sample": EntryPoint("sample", (STUDENT_FILE,), "python",
                         "sample(logits, temperature, gumbel) in kv_cache.py -> tokens (B,)"),
}

_MODULES: dict[str, object] = {}


def _module(path) -> object:
    key = str(path)
    if key not in _MODULES:
        _MODULES[key] = import_file(path, REPO_ROOT / PATH)
    return _MODULES[key]


def given_model():
    """The lab's llama.py from this repository (never from a submission): the model every entry runs."""
    return _module(REPO_ROOT / PATH / MODEL_FILE)


def build_model(inputs, p):
    llama = given_model()
    return llama.Llama(llama.LlamaConfig(**p["cfg"]), {n: inputs[n] for n in WEIGHT_NAMES})


def bind(name, mod):
    """Entry `name` as a function of (inputs, params), calling the functions of the student's module `mod`."""
    if name == "sample":
        def sample_entry(inputs, p):
            return mod.sample(inputs["logits"], p["temperature"], inputs["gumbel"])
        return sample_entry

    def generate_entry(inputs, p):
        model = build_model(inputs, p)
        with torch.inference_mode():
            if name == "decode":
                _, logits = mod.generate(model, inputs["prompt"], inputs["prompt_lens"], p["N"],
                                         forced=inputs["forced"])
                return logits
            return tuple(mod.generate(model, inputs["prompt"], inputs["prompt_lens"], p["N"],
                                      temperature=p["temperature"], gumbel=inputs["gumbel"]))
    return generate_entry


def load_entry(name, files):
    return bind(name, _module(files[STUDENT_FILE]))


def call(fn, inputs, p):
    return fn(inputs, p)


# ---- configs ----------------------------------------------------------------------------------------

def cfg(vocab, dim, layers, heads, kv_heads, ffn, max_len=256):
    return {"vocab_size": vocab, "dim": dim, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv_heads,
            "ffn_dim": ffn, "max_seq_len": max_len, "rope_theta": 10000.0, "norm_eps": 1e-5}


def head_dim(c) -> int:
    return c["dim"] // c["n_heads"]


# CPU tier: head_dim 16, 8 query heads, GQA ratios 1, 4, 8 (8 = multi-query).
TINY = {r: cfg(384, 128, 2, 8, 8 // r, 256) for r in (1, 4, 8)}
TINY_ODD = cfg(300, 96, 3, 6, 2, 200)                   # head_dim 16, ratio 3, three layers, odd vocab
GPU_CFG = {r: cfg(4096, 512, 4, 8, 8 // r, 1376, max_len=2048) for r in (1, 4, 8)}   # head_dim 64
BENCH_CFG = cfg(8192, 1024, 8, 16, 4, 2816, max_len=8192)                            # ~110M parameters


# ---- inputs -----------------------------------------------------------------------------------------

def _linear(shape, gen, gain):
    """nn.Linear-layout weights: N(0, 1) with a per-output-row scale in [0.6, 1.6] and rare x4 outliers,
    times gain / sqrt(fan_in), so activations keep their size from layer to layer."""
    w = torch.randn(shape, generator=gen)
    rows = shape[:-1] + (1,)
    w = w * torch.exp(torch.empty(rows).uniform_(-0.5, 0.5, generator=gen))
    w = torch.where(torch.rand(shape, generator=gen) < 1e-3, 4 * w, w)
    return w * (gain / math.sqrt(shape[-1]))


# Gains: attention scores q.k/sqrt(d) with a spread of ~1 (uneven attention, so a wrong mask, slot or
# position changes the output by ~1e-1, yet not so peaked that fp32 rounding of the scores approaches the
# 1e-5 tolerance: see the tolerances), logits with a spread of ~4 (a confident LM head).
GAINS = {"wq": 1.0, "wk": 1.0, "wv": 1.0, "wo": 1.0, "w_gate": 1.0, "w_up": 1.0, "w_down": 1.0, "lm_head": 4.0}


def make_weights(c, gen, dtype) -> dict[str, torch.Tensor]:
    L, d, hd, f, V = c["n_layers"], c["dim"], head_dim(c), c["ffn_dim"], c["vocab_size"]
    shapes = {"wq": (L, c["n_heads"] * hd, d), "wk": (L, c["n_kv_heads"] * hd, d),
              "wv": (L, c["n_kv_heads"] * hd, d), "wo": (L, d, c["n_heads"] * hd), "w_gate": (L, f, d),
              "w_up": (L, f, d), "w_down": (L, d, f), "lm_head": (V, d)}
    w = {"embed": realistic((V, d), gen, "fp32")}
    for name in ("attn_norm", "mlp_norm"):
        w[name] = torch.exp(torch.empty(L, d).uniform_(-0.7, 0.4, generator=gen))
    w["norm"] = torch.exp(torch.empty(d).uniform_(-0.7, 0.4, generator=gen))
    for name, shape in shapes.items():
        w[name] = _linear(shape, gen, GAINS[name])
    return {n: w[n].to(DTYPES[dtype]) for n in WEIGHT_NAMES}


def _tokens(shape, gen, vocab, avoid):
    """Uniform token ids in [0, vocab) other than `avoid` (the padding id in nan_pad cases)."""
    if avoid is None:
        return torch.randint(0, vocab, shape, generator=gen)
    t = torch.randint(0, vocab - 1, shape, generator=gen)
    return t + (t >= avoid).long()


def _prompts(p, gen, w):
    """Right-padded prompts (B, T) and their lengths. Lengths are drawn in [min_len, T] and one row is
    exactly T long; not "tight": every row is shorter than T (the padded width is nobody's length).
    nan_pad: the padding is one token id whose embedding row is set to NaN."""
    B, T, V = p["B"], p["T"], p["cfg"]["vocab_size"]
    tight = p.get("tight", True)
    pad = int(torch.randint(0, V, (1,), generator=gen)) if p.get("nan_pad") else None
    lens = torch.randint(min(p.get("min_len", T), T - (not tight)), T + tight, (B,), generator=gen)
    if tight:
        lens[int(torch.randint(0, B, (1,), generator=gen))] = T
    prompt = _tokens((B, T), gen, V, pad)
    padding = torch.arange(T)[None, :] >= lens[:, None]
    if pad is not None:
        prompt = prompt.masked_fill(padding, pad)
        w["embed"][pad] = float("nan")
    return prompt, lens, pad


def gumbel_noise(shape, gen):
    """-log(-log(U)), U uniform in (0, 1): argmax(logits / T + noise) samples softmax(logits / T)."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


def _margin(scores):
    """Per row: (argmax, top1 - top2, threshold). Scores whose top two are closer than the threshold are
    'near ties': fp32 rounding (~1e-6 of the logits) could flip the argmax, so inputs are adjusted away from
    them (the argmax must be checkable exactly). Threshold: 2e-4 of the row's rms, ~100x that rounding."""
    top2 = scores.topk(2, dim=-1)
    gap = top2.values[..., 0] - top2.values[..., 1]
    thresh = 2e-4 * scores.pow(2).mean(-1).sqrt().clamp_min(1.0)
    return top2.indices[..., 0], gap, thresh


def make_inputs(p, gen):
    entry = p["entry"]
    if entry == "sample":
        B, V, temp = p["B"], p["V"], p["temperature"]
        logits = (realistic((B, V), gen, "fp32") * 2.0).to(DTYPES[p["dtype"]])
        g = gumbel_noise((B, V), gen)
        scores = logits.double() / temp + g.double() if temp > 0 else logits.double()
        top, gap, thresh = _margin(scores)
        near = (gap < thresh).nonzero().flatten().tolist()
        for b in near:                  # move the winner clear of the runner-up (the noise, or fp32 logits)
            if temp > 0:
                g[b, top[b]] += 2 * float(thresh[b])
            else:
                logits[b, top[b]] += 2 * float(thresh[b])
        return {"logits": logits, "gumbel": g}

    c = p["cfg"]
    w = make_weights(c, gen, p["dtype"])
    B, N = p["B"], p["N"]
    for _attempt in range(50):
        prompt, lens, pad = _prompts(p, gen, w)
        inputs = dict(w, prompt=prompt, prompt_lens=lens)
        if entry == "decode":
            inputs["forced"] = _tokens((B, N), gen, c["vocab_size"], pad)
            return inputs
        inputs["gumbel"] = gumbel_noise((B, N, c["vocab_size"]), gen)
        if _fix_near_ties(inputs, p):
            return inputs
    raise RuntimeError(f"lab05 spec: no tie-free greedy trajectory in 50 draws for {p}")


def _fix_near_ties(inputs, p) -> bool:
    """Run the fp64 reference trajectory. Sampling (temperature > 0): where a step's top two scores are
    near a tie, nudge that step's noise so the winner wins clearly (same trajectory, now checkable).
    Greedy: there is no noise to nudge; report False and the caller draws new prompts."""
    temp = p["temperature"]
    out = {}

    def on_step(b, t, scores):
        top, gap, thresh = _margin(scores)
        if gap < thresh:
            if temp == 0:
                out["tie"] = True
                return None
            inputs["gumbel"][b, t, top] += 2 * float(thresh)
        return None

    _trajectory(inputs, p, on_step)
    return not out.get("tie")


# ---- references (fp64, grading process only) --------------------------------------------------------

def rope_tables(hd, theta, max_len):
    """The same table as llama.rope_tables (bit for bit: fp32 angles, fp64 cos/sin rounded once)."""
    inv_freq = (1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)).float()
    angles = (torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]).double()
    return torch.cos(angles).float(), torch.sin(angles).float()


REF_HEAD_CHUNK = 4       # heads per fp64 score block: at 4096 tokens one head's scores are 134 MB


class Reference:
    """The textbook forward in fp64 for ONE sequence (no padding, no batch, no cache): what every
    step's logits must be."""

    def __init__(self, inputs, c):
        self.c = c
        self.w = {n: inputs[n].double() for n in WEIGHT_NAMES}
        dev = self.w["embed"].device
        cos, sin = rope_tables(head_dim(c), c["rope_theta"], c["max_seq_len"])
        self.cos, self.sin = cos.double().to(dev), sin.double().to(dev)

    def _rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["norm_eps"]) * w

    def _rope(self, x, S):               # x (heads, S, hd)
        cos, sin = self.cos[:S], self.sin[:S]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def hidden(self, tokens):
        c, w = self.c, self.w
        S, H, KVH, hd = tokens.numel(), c["n_heads"], c["n_kv_heads"], head_dim(c)
        h = w["embed"][tokens]                                                  # (S, d)
        future = torch.ones(S, S, dtype=torch.bool, device=h.device).triu(1)
        for i in range(c["n_layers"]):
            x = self._rms(h, w["attn_norm"][i])
            q = self._rope((x @ w["wq"][i].T).view(S, H, hd).transpose(0, 1), S)      # (H, S, hd)
            k = self._rope((x @ w["wk"][i].T).view(S, KVH, hd).transpose(0, 1), S)    # (KVH, S, hd)
            v = (x @ w["wv"][i].T).view(S, KVH, hd).transpose(0, 1)
            k, v = k.repeat_interleave(H // KVH, 0), v.repeat_interleave(H // KVH, 0)
            o = torch.empty_like(q)
            for j in range(0, H, REF_HEAD_CHUNK):
                s = (q[j:j + REF_HEAD_CHUNK] @ k[j:j + REF_HEAD_CHUNK].transpose(-1, -2)) / math.sqrt(hd)
                o[j:j + REF_HEAD_CHUNK] = torch.softmax(s.masked_fill(future, float("-inf")), -1) @ v[j:j + REF_HEAD_CHUNK]
            h = h + o.transpose(0, 1).reshape(S, H * hd) @ w["wo"][i].T
            x = self._rms(h, w["mlp_norm"][i])
            h = h + (torch.nn.functional.silu(x @ w["w_gate"][i].T) * (x @ w["w_up"][i].T)) @ w["w_down"][i].T
        return self._rms(h, w["norm"])

    def logits(self, tokens, rows):
        return self.hidden(tokens)[rows] @ self.w["lm_head"].T


@contextlib.contextmanager
def _one_thread_on_cpu(t: torch.Tensor):
    """The fp64 references are hundreds of tiny ops: on a CPU, OpenMP's thread team costs more than it
    saves (10x slower on a busy 2-core machine). One thread for their duration; the setting is restored."""
    if t.device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _trajectory(inputs, p, on_step=None):
    """Greedy or Gumbel-max generation in fp64, recomputing the full forward of the growing sequence at
    every step. Returns tokens (B, N) int64 and logits (B, N, V) fp64."""
    with _one_thread_on_cpu(inputs["prompt"]):
        return _trajectory_steps(inputs, p, on_step)


def _trajectory_steps(inputs, p, on_step):
    ref = Reference(inputs, p["cfg"])
    temp, N = p["temperature"], p["N"]
    toks, logits = [], []
    for b in range(p["B"]):
        seq = inputs["prompt"][b, :int(inputs["prompt_lens"][b])]
        row_t, row_z = [], []
        for t in range(N):
            z = ref.logits(seq, -1)
            scores = z / temp + inputs["gumbel"][b, t].double() if temp > 0 else z
            if on_step is not None:
                on_step(b, t, scores)
                scores = z / temp + inputs["gumbel"][b, t].double() if temp > 0 else z
            tok = scores.argmax()
            row_t.append(tok)
            row_z.append(z)
            seq = torch.cat((seq, tok.view(1)))
        toks.append(torch.stack(row_t))
        logits.append(torch.stack(row_z))
    return torch.stack(toks), torch.stack(logits)


def reference(inputs, p):
    entry = p["entry"]
    if entry == "sample":
        z = inputs["logits"].double()
        t = p["temperature"]
        return (z / t + inputs["gumbel"].double() if t > 0 else z).argmax(-1)
    if entry == "generate":
        return _trajectory(inputs, p)
    with _one_thread_on_cpu(inputs["prompt"]):
        ref = Reference(inputs, p["cfg"])
        out = []
        for b in range(p["B"]):
            n = int(inputs["prompt_lens"][b])
            seq = torch.cat((inputs["prompt"][b, :n], inputs["forced"][b, :p["N"] - 1]))
            out.append(ref.logits(seq, slice(n - 1, n - 1 + p["N"])))
        return torch.stack(out)


def outputs(p):
    if p["entry"] == "sample":
        return [((p["B"],), "int64", "tokens")]
    logits = ((p["B"], p["N"], p["cfg"]["vocab_size"]), p["dtype"])
    if p["entry"] == "decode":
        return [logits]
    return [((p["B"], p["N"]), "int64", "tokens"), logits]


# ---- cases ------------------------------------------------------------------------------------------

def decode(c, B, T, N, dtype="fp32", min_len=1, nan_pad=True, tight=True):
    return {"entry": "decode", "cfg": c, "B": B, "T": T, "N": N, "dtype": dtype, "min_len": min_len,
            "nan_pad": nan_pad, "tight": tight}


def gen_case(c, B, T, N, temperature, dtype="fp32", min_len=1):
    return {"entry": "generate", "cfg": c, "B": B, "T": T, "N": N, "dtype": dtype, "min_len": min_len,
            "nan_pad": False, "tight": True, "temperature": temperature}


def sample_case(B, V, temperature, dtype="fp32"):
    return {"entry": "sample", "B": B, "V": V, "temperature": temperature, "dtype": dtype}


def _ratio(c):
    return c["n_heads"] // c["n_kv_heads"]


def _name(p):
    if p["entry"] == "sample":
        return f"{p['dtype']}-b{p['B']}-v{p['V']}-temp{p['temperature']:g}"
    c = p["cfg"]
    model = f"gqa{_ratio(c)}-L{c['n_layers']}d{c['dim']}h{c['n_heads']}kv{c['n_kv_heads']}"
    pad = "equal" if p["min_len"] == p["T"] else ("nanpad" if p["nan_pad"] else "ragged")
    pad += "" if p.get("tight", True) else "-loose"
    temp = f"-temp{p['temperature']:g}" if p["entry"] == "generate" else ""
    return f"{p['dtype']}-{model}-b{p['B']}t{p['T']}n{p['N']}-{pad}{temp}"


CPU, BOTH, GPU = ("cpu",), ("cpu", "gpu"), ("gpu",)


def _cases():
    cases = []
    dec = [(decode(TINY[1], 4, 24, 12), BOTH), (decode(TINY[4], 4, 24, 12), BOTH), (decode(TINY[8], 4, 24, 12), BOTH),
           (decode(TINY[4], 5, 17, 9, min_len=17), CPU),                  # no padding at all
           (decode(TINY[4], 3, 20, 7, nan_pad=False, min_len=5), CPU),    # finite garbage in the padding
           (decode(TINY[8], 6, 11, 8, tight=False), CPU),                 # every row shorter than T
           (decode(TINY[4], 1, 1, 8), CPU),                               # a one-token prompt
           (decode(TINY[1], 3, 20, 1), CPU),                              # prefill only
           (decode(TINY_ODD, 3, 30, 10), CPU)]                            # ratio 3, 3 layers
    for p, tiers in dec:
        cases.append(Case(_name(p), "decode", p, tiers))
    for r in (1, 4, 8):
        for dt in ("fp32", "bf16"):
            p = decode(GPU_CFG[r], 5, 700, 24, dtype=dt)
            cases.append(Case(_name(p), "decode", p, GPU))
    p = decode(BENCH_CFG, 2, 1500, 16, dtype="bf16")
    cases.append(Case(_name(p), "decode", p, GPU))
    for temp in (0.0, 0.7, 1.5):
        p = gen_case(TINY[4], 4, 16, 12, temp)
        cases.append(Case(_name(p), "generate", p, BOTH))
    p = gen_case(TINY[8], 3, 9, 10, 1.0)
    cases.append(Case(_name(p), "generate", p, CPU))
    for temp in (0.0, 0.5, 1.0, 2.0):
        p = sample_case(8, 1000, temp)
        cases.append(Case(_name(p), "sample", p, BOTH))
    for p in (sample_case(16, 32000, 0.8, "bf16"), sample_case(4, 128256, 1.0)):
        cases.append(Case(_name(p), "sample", p, GPU))
    return cases


def hidden_cases(seed):
    """Shapes and GQA ratios drawn from the grading seed."""
    rng = random.Random(seed * 7919 + 5)
    r = rng.choice((1, 2, 4, 8))
    small = cfg(rng.randint(64, 600), 8 * 16, rng.randint(1, 3), 8, 8 // r, rng.choice((96, 256)))
    out = [Case("seeded-" + _name(p), "decode", p, BOTH) for p in
           [decode(small, rng.randint(1, 6), rng.randint(1, 40), rng.randint(1, 12), nan_pad=rng.random() < 0.7)]]
    big_r = rng.choice((1, 4, 8))
    big = cfg(rng.randint(1000, 8000), 512, rng.randint(2, 4), 8, 8 // big_r, 1024, max_len=2048)
    p = decode(big, rng.randint(1, 8), rng.randint(2, 900), rng.randint(2, 40), dtype=rng.choice(("fp32", "bf16")))
    out.append(Case("seeded-" + _name(p), "decode", p, GPU))
    p = gen_case(small, rng.randint(1, 5), rng.randint(1, 20), rng.randint(1, 12), rng.choice((0.0, 0.6, 1.0)))
    out.append(Case("seeded-" + _name(p), "generate", p, BOTH))
    return out


# ---- speed ------------------------------------------------------------------------------------------

def recompute(inputs, p):
    """Decoding without a cache: every new token runs the full forward over the whole sequence so far
    (prompt + tokens decoded until now) and keeps the last position's logits. Same model, same batch,
    same right padding; the only difference from the student's entry is the missing cache."""
    model = build_model(inputs, p)
    prompt, lens, forced, N = inputs["prompt"], inputs["prompt_lens"], inputs["forced"], p["N"]
    B, T = prompt.shape
    rows = torch.arange(B, device=prompt.device)
    with torch.inference_mode():
        tokens = torch.cat((prompt, torch.zeros(B, N - 1, dtype=prompt.dtype, device=prompt.device)), 1)
        logits = []
        for t in range(N):
            width = T + t
            valid = torch.arange(width, device=prompt.device)[None, :] < (lens + t)[:, None]
            h = model.hidden(tokens[:, :width], valid=valid)
            logits.append(model.logits(h[rows, lens - 1 + t]))
            if t < N - 1:
                tokens[rows, lens + t] = forced[:, t]
        return torch.stack(logits, 1)


def _non_embedding_params(c):
    hd = head_dim(c)
    per_layer = c["dim"] * hd * (2 * c["n_heads"] + 2 * c["n_kv_heads"]) + 3 * c["dim"] * c["ffn_dim"]
    return c["n_layers"] * per_layer


def _mean_len(p):
    """Expected prompt length for lengths uniform in [min_len, T] (one row pinned at T when tight)."""
    lo, T, B = p.get("min_len", p["T"]), p["T"], p["B"]
    mean = (lo + T) / 2
    return (T + (B - 1) * mean) / B if p.get("tight", True) else mean


def flops(p):
    """Lower bound on the work: the linear layers of every real token once (prefill: the prompt tokens;
    decode: one token per row per step; LM head only where logits are needed) plus causal attention
    (QK^T and PV over the preceding positions)."""
    c, B, N = p["cfg"], p["B"], p["N"]
    Lp = _mean_len(p)
    tokens = B * (Lp + N - 1)
    linear = 2.0 * _non_embedding_params(c) * tokens + 2.0 * c["dim"] * c["vocab_size"] * B * N
    ctx = B * (Lp * Lp / 2 + (N - 1) * (Lp + N / 2))      # (query, key) pairs
    attn = 4.0 * c["n_layers"] * c["n_heads"] * head_dim(c) * ctx
    return linear + attn


def bytes_moved(p):
    """Lower bound on HBM traffic: every decode step reads every weight once (they cannot stay in a 50 MB
    L2), plus the prefill's read of the weights, and the KV cache written once and read by every step."""
    c, B, N = p["cfg"], p["B"], p["N"]
    e = DTYPES[p["dtype"]].itemsize
    weights = (_non_embedding_params(c) + c["dim"] * c["vocab_size"]) * e
    kv_tok = 2 * c["n_layers"] * c["n_kv_heads"] * head_dim(c) * e
    Lp = _mean_len(p)
    kv_reads = B * kv_tok * (N - 1) * (Lp + N / 2)
    return float(weights * N + kv_tok * B * (Lp + N) + kv_reads)


BENCH = decode(BENCH_CFG, 16, 4096, 32, dtype="bf16", min_len=3072, nan_pad=False)

# Arithmetic for the tiers (H100, bf16; B = 16 prompts of 3072-4096 tokens, padded to 4096; 32 new tokens):
#   one full forward over 16 x 4096 = 65.5k tokens: linear layers 2 * 90M params * 65.5k = 11.8 TFLOP (~18 ms
#     at ~650 TFLOP/s) + causal attention 4 * 16 * 16 heads * 4096^2 / 2 * 64 * 8 layers = 4.4 TFLOP (~12 ms)
#     + elementwise traffic (~10 ms): F ~ 40 ms (30-45 ms).
#   recompute baseline: 32 full forwards, ~32 F ~ 1.3 s.
#   with the cache: one prefill (~F) + 31 decode steps. A decode step must move ~0.7 GB (weights 0.2 GB, the
#     cache of 16 sequences 0.5 GB: ~0.25 ms at 3 TB/s), but eager PyTorch launches ~350 small kernels from
#     Python: ~1.5-3 ms of CPU time. 40 + 31 * 2 ms ~ 100 ms -> ~13x; the pessimistic corner (F = 25 ms,
#     4 ms per step) still gives ~6x.
#   full marks at 4x: clears with margin; a submission that recomputes (~1x) gets nothing.
TIERS = (SpeedTier(2.0, 0.25), SpeedTier(3.0, 0.5), SpeedTier(3.5, 0.75), SpeedTier(4.0, 1.0))


def sweep(entry):
    if entry != "decode":
        return []
    if not torch.cuda.is_available():
        return [decode(TINY[4], 2, T, 8) for T in (16, 64, 128)]
    return [decode(BENCH_CFG, 16, T, 32, dtype="bf16", min_len=T * 3 // 4, nan_pad=False)
            for T in (256, 512, 1024, 2048, 4096)]


def hints(kind, p):
    if p["entry"] == "sample":
        return ("temperature 0: argmax(logits), the noise ignored; otherwise argmax(logits / temperature + "
                "gumbel), in fp32")
    if kind in ("nan", "unwritten"):
        return ("NaN in the logits: padding leaked (the padded token's embedding is NaN in this case: pass "
                "valid= to model.hidden in the prefill), or the cache was allocated with torch.empty and an "
                "unwritten (masked) slot entered P @ V as 0 * NaN = NaN: allocate with zeros, or never hand "
                "unwritten slots to the attention")
    return ("compare with a full forward: step 0 (the prefill's logits) must come from each row's last real "
            "token (position len_b - 1); decoded token t sits at position len_b + t in its own row (RoPE angle "
            "and cache slot); the mask must let each query see its own row's slots 0..position, nothing else")


SPEC = LabSpec(
    id="lab05",
    title="KV cache: prefill, one-token decode, sampling (small Llama, GQA, ragged batches)",
    path=PATH,
    seed_topic="KV cache: how K/V grow during autoregressive decoding",
    student_files=(STUDENT_FILE,),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    # fp32 (the 1e-5): the student's fp32 model against the fp64 forward of the same weights. The
    #   error is fp32 rounding through the network, and it is set mostly by the attention scores (softmax
    #   turns an absolute score error into a relative probability error): with the GAINS above (scores with
    #   a spread of ~1) the worst elements, (|err| - rtol*|ref|) / rms(ref) over every logit of a case, are
    #   1-3e-6 on the CPU cases and 4-5.5e-6 on the GPU-size fp32 cases (700-900 tokens, 4 layers, run on
    #   the CPU; the model's own full forward alike). With scores twice as peaked (gain 1.6) the GPU-size
    #   ones reach 1.5e-5: the gains are part of the tolerance. Anything structural (a wrong slot, position,
    #   mask, padding) moves logits by >= 1e-2 of rms, an fp16 cache by ~2e-3: 1e-5 separates them.
    # bf16 (GPU): activations rounded to bf16 after every op (u = 2^-8), so the final hidden state is off by
    #   ~1% and the logits, the LM head's dot products with it, by ~1% of their rms each; the worst of
    #   ~5e5 logits is ~4x that. Emulated on the CPU (the GPU cases run in bf16 there): worst elements at
    #   0.06-0.09 of rms beyond rtol (4 and 8 layers, 700-1500 tokens). 0.2 leaves room for the GPU's
    #   kernels and still fails anything structural (a wrong position or slot moves logits by ~rms).
    # tokens: exact. Inputs are drawn so that no step's top two scores are within 2e-4 of each other.
    tolerances={"fp32": Tolerance(rtol=1e-5, atol_rms=1e-5),
                "bf16": Tolerance(rtol=2e-2, atol_rms=0.2),
                "tokens": Tolerance(rtol=0.0, atol_rms=0.0)},
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=[Benchmark("decode-bf16-b16-t4096-n32", "decode", BENCH, "recompute", TIERS, points=3,
                          host_bound=True,      # ~7 ms a token of Python and launches; the floor is 14 ms in all
                          target_note="the cache vs recomputing the full forward per token: ~13x expected on "
                                      "an H100, full marks at 4x")],
    baselines={"recompute": recompute},
    flops=flops,
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "tensor_" + p["dtype"],
    hints=hints,
    time_limit_s=120.0,
    sweep=sweep,
    notebook="lab05_kv_cache.ipynb",
)

for _c in SPEC.all_cases(0) + [Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
    assert _c.params["entry"] == _c.entry, f"lab05 spec: case {_c.name} has entry {_c.params['entry']}"
