"""Grade one lab: plan the checks for a tier, run each in the student's process, judge here.

Order of a lab's checks: files -> compile (CUDA C) -> audit (forbidden ops/kernels) -> correctness ->
speed. Any failure is data: a check fails with a message and the next check runs.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import REPO_ROOT, calibration, cuda, hardware
from .compare import check_output_type, compare
from .inputs import apply_salt, derive_seed, make, salt_plan, salted_input
from .isolation import StudentFailure, WorkerHandle
from .worker import BASELINE
from .labs import get
from .spec import DTYPES, Benchmark, Case, LabSpec

L2_FLUSH_BYTES = 512 << 20       # 10x the H100's 50 MB L2; ~0.17 ms of GPU per call keeps batches GPU-bound
HOST_SLACK_MS = 0.5              # a GPU spin after each flush (not timed): with the flush, the GPU stays busy
                                 # ~0.67 ms per call, so the host's own work per call (the loop, the salt, the
                                 # wrapper, Triton's launch path: 0.2-0.3 ms on the H100's host) runs ahead of
                                 # the GPU and the events time GPU work only (0.2 ms left lab 10's 24 us decode
                                 # calls at 40-200 us in some batches, 2026-11-28). Calls that synchronize first
                                 # (lab01's launch-bound step) wait for the spin and still pay their host time.
BENCH_INPUT_SETS = 3             # rotating inputs: consecutive reps never see the same buffers
BENCH_WARMUP = 3                 # calls, and at least
BENCH_WARMUP_S = 0.2             # seconds of calls: lets an idle GPU's clock ramp up before timing
BENCH_ROUNDS = 6                 # student batch, baseline batch, repeated (interleaved)
BENCH_REPS = 10                  # calls per batch
# LabSpec.salt applied before each timed call (on since 2026-11-28, after the H100 runs in BENCHMARKS.md;
# LABS_SALT_TIMED_INPUTS=0 turns it off, for comparing the protocol with and without it).
SALT_TIMED_INPUTS = os.environ.get("LABS_SALT_TIMED_INPUTS", "1") != "0"
UNEVEN_CALLS = 1.25              # scored_times: a median batch mean this far over the median call, and
UNEVEN_MARGIN_MS = 0.05          # by this much: some calls did other calls' work, and batch means are scored
TIER_EDGE = 0.03                 # a ratio within 3% of a tier edge is measured again
WALL_AGREEMENT = 0.9             # reported call time >= 0.9 x what the batches' wall clock leaves for it, less
WALL_SLACK_MS = 0.03             # 30 us and the baseline's own gap (at most BASE_GAP_CAP_MS unless host-bound).
HOST_BOUND_AGREEMENT, HOST_BOUND_SLACK_MS = 0.8, 0.08   # Benchmark.host_bound: see _wall_disagrees
BASE_GAP_CAP_MS = 0.03           # Measured on the H200 (2026-11-29, null batches): honest calls of 12 us-16 ms
                                 # fell 8-28 us short of the wall (lab01's host-bound step 53 us), the patched
                                 # timer of lab02/patches_timer 177 us; cuBLAS's own gap was 37-67 us.


@dataclass
class CheckResult:
    lab: str
    name: str
    group: str          # files | compile | implemented | audit | correctness | speed
    entry: str
    status: str         # pass | fail | skip
    points: float
    max_points: float
    message: str
    details: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class LabResult:
    lab: str
    title: str
    source: str
    tier: str
    env: dict
    checks: list[CheckResult]
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_score(self) -> float:
        return sum(c.max_points for c in self.checks)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def as_dict(self):
        d = asdict(self)
        d.update(score=self.score, max_score=self.max_score, passed=self.passed)
        return d


@dataclass
class Planned:
    name: str
    group: str
    entry: str
    max_points: float
    run: Callable[["Planned", "Context"], CheckResult]   # called as p.run(p, ctx)


# ---- where the student's files come from ----------------------------------------------------------

def resolve_files(spec: LabSpec, source: str | Path) -> dict[str, Path]:
    """'student' -> the lab folder; 'solutions' -> solutions/<lab path>; a folder -> <folder>/<lab path>/<f>
    or, for a flat submission, <folder>/<f>."""
    if source == "student":
        base = REPO_ROOT / spec.path
        return {f: base / f for f in spec.student_files}
    if source == "solutions":
        base = REPO_ROOT / "solutions" / spec.path
        return {f: base / f for f in spec.student_files}
    root = Path(source)
    files = {}
    for f in spec.student_files:
        nested = root / spec.path / f
        files[f] = nested if nested.exists() else root / f
    return files


# ---- the grading context --------------------------------------------------------------------------

class Context:
    def __init__(self, spec: LabSpec, files: dict[str, Path], tier: str, seed: int):
        self.spec, self.files, self.tier, self.seed = spec, files, tier, seed
        self.device = "cuda" if tier == "gpu" else "cpu"
        self.worker = WorkerHandle(spec.id, {k: str(v) for k, v in files.items()}, self.device,
                                   interpret=(tier == "cpu"))
        self.missing = {f for f, p in files.items() if not p.is_file()}
        self.audit_failed: dict[str, str] = {}
        self.env = hardware.environment(tier, seed)
        self._baseline_worker: WorkerHandle | None = None

    def baseline_worker(self) -> WorkerHandle:
        """A process running only the lab's baselines (trusted code), timed like the student's."""
        if self._baseline_worker is None:
            self._baseline_worker = WorkerHandle(self.spec.id, {}, self.device, interpret=False, role="baseline")
        return self._baseline_worker

    def close(self):
        self.worker.close()
        if self._baseline_worker is not None:
            self._baseline_worker.close()

    def entry_missing(self, entry: str) -> set[str]:
        return set(self.spec.entries[entry].files) & self.missing


def _result(ctx: Context, p: Planned, status: str, message: str, points: float | None = None, **details):
    pts = p.max_points if (status == "pass" and points is None) else (points or 0.0)
    if p.entry in ctx.audit_failed and p.group in ("correctness", "speed") and pts:
        pts, message = 0.0, f"{message} (0 points: {ctx.audit_failed[p.entry]})"
    return CheckResult(ctx.spec.id, p.name, p.group, p.entry, status, pts, p.max_points, message, details)


def _error_text(reply: dict) -> str:
    if reply.get("type") == "NotImplementedError":
        return f"NotImplementedError: {reply.get('message')}"
    where = f" (at {reply['where'][-1]})" if reply.get("where") else ""
    return f"{reply.get('type')}: {reply.get('message')}{where}"


# ---- checks ---------------------------------------------------------------------------------------

def _files_check(p: Planned, ctx: Context) -> CheckResult:
    if ctx.missing:
        names = ", ".join(f"{f} (looked for {ctx.files[f]})" for f in sorted(ctx.missing))
        return _result(ctx, p, "fail", f"missing student file(s): {names}")
    return _result(ctx, p, "pass", f"found {len(ctx.files)} file(s)")


def _compile_check(src: str) -> Callable:
    def run(p: Planned, ctx: Context) -> CheckResult:
        if src in ctx.missing:
            return _result(ctx, p, "fail", f"missing student file {src}")
        if cuda.nvcc_path() is None:
            if ctx.tier == "gpu":
                return _result(ctx, p, "skip", "nvcc not found: compiled by NVRTC when the kernels run")
            return _result(ctx, p, "skip", "not compile-checked: nvcc not found on this machine")
        ok, out = cuda.nvcc_compile(ctx.files[src])
        if ok:
            return _result(ctx, p, "pass", "nvcc -arch=sm_90 compiles it")
        return _result(ctx, p, "fail", "nvcc failed:\n" + "\n".join(out.splitlines()[:30]))
    return run


def _implemented_check(p: Planned, ctx: Context) -> CheckResult:
    """CPU tier, CUDA entries: the kernel cannot run here, but a TODO left in its body can be seen."""
    e = ctx.spec.entries[p.entry]
    src = e.files[0]
    if src in ctx.missing:
        return _result(ctx, p, "fail", f"missing student file {src}")
    todo = cuda.todo_message(ctx.files[src].read_text(), e.symbol)
    if todo is not None:
        return _result(ctx, p, "fail", f"NotImplementedError: {todo}")
    return _result(ctx, p, "pass", f"{e.symbol} has no TODO left (it runs on the GPU tier only)")


def _audit_check(case: Case) -> Callable:
    def run(p: Planned, ctx: Context) -> CheckResult:
        spec = ctx.spec
        if ctx.entry_missing(p.entry):
            return _result(ctx, p, "fail", f"missing student file(s) {sorted(ctx.entry_missing(p.entry))}")
        msg = {"cmd": "audit", "entry": p.entry, "params": dict(case.params),
               "seed": derive_seed(ctx.seed, spec.id, "audit", case.name)}
        try:
            reply = ctx.worker.request(msg, 2 * spec.time_limit_s + 60, f"auditing {p.entry}")
        except StudentFailure as exc:
            return _result(ctx, p, "fail", str(exc))
        if reply.get("status") != "ok":
            return _result(ctx, p, "fail", f"{_error_text(reply)} (so the audit could not run)")
        bad_ops = [o for o in reply["ops"] if any(re.search(f, o, re.I) for f in spec.forbidden_ops)]
        bad_k = [k for k in reply["kernels"] if any(re.search(f, k, re.I) for f in spec.forbidden_kernels)]
        if bad_ops or bad_k:
            what = ", ".join(sorted(set(bad_ops))[:5] + sorted(set(bad_k))[:5])
            ctx.audit_failed[p.entry] = f"the kernel audit found {what}"
            return _result(ctx, p, "fail", f"{p.entry} called what this lab asks you to write: {what}. "
                                           "Compute the result with your own kernel.",
                           ops=bad_ops, kernels=bad_k)
        n = len(reply["kernels"])
        missing = _own_kernel_missing(ctx, p.entry, reply)
        if missing:
            ctx.audit_failed[p.entry] = "the audited call ran none of your kernels"
            return _result(ctx, p, "fail", missing, kernels=reply["kernels"][:20],
                           triton_launches=reply.get("triton_launches", [])[:20])
        return _result(ctx, p, "pass", f"no forbidden op or kernel ({len(reply['ops'])} ops, {n} GPU kernels seen)",
                       kernels=reply["kernels"][:20], triton_launches=reply.get("triton_launches", [])[:20])
    return run


def jit_kernel_names(path: Path) -> set[str]:
    """Names of the Triton kernels a Python file defines: functions under a decorator that mentions `jit`
    (@triton.jit, @triton.jit(...), under @triton.autotune too) and `name = triton.jit(fn)`. Parsed, never
    imported: this runs in the grading process."""
    import ast
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any("jit" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
        elif isinstance(node, ast.Call) and "jit" in ast.unparse(node.func):
            names.update(a.id for a in node.args if isinstance(a, ast.Name))
    return names


def _own_kernel_missing(ctx: Context, entry: str, reply: dict) -> str | None:
    """Why the audited call does not count as the student's own kernel (threat 10 beyond torch: NumPy's
    BLAS, another library, a copy of the answer), or None. Triton entries must launch a @triton.jit
    kernel defined in their own files; CUDA entries must run their kernel symbol on the GPU."""
    e = ctx.spec.entries[entry]
    if not e.own_kernel or e.kind not in ("triton", "cuda"):
        return None
    ran = set(reply.get("triton_launches", [])) | set(reply.get("kernels", []))
    if e.kind == "cuda":
        if ctx.tier != "gpu" or e.symbol in ran:
            return None
        return (f"{entry}: the audited call never ran your CUDA kernel {e.symbol} "
                f"(GPU kernels seen: {', '.join(sorted(reply.get('kernels', []))[:5]) or 'none'})")
    defined = set().union(*(jit_kernel_names(ctx.files[f]) for f in e.files if f in ctx.files))
    if defined & ran:
        return None
    where = ", ".join(e.files)
    if not defined:
        return f"{entry}: no @triton.jit kernel is defined in {where}; the lab asks you to write one"
    return (f"{entry}: the audited call launched none of the Triton kernels defined in {where} "
            f"({', '.join(sorted(defined))}); the result must come from your own kernel")


def _inputs_unchanged(before: dict, after: dict) -> str | None:
    for k, t in before.items():
        a = after.get(k)
        if not isinstance(a, torch.Tensor) or a.shape != t.shape or a.dtype != t.dtype:
            return f"input {k!r} came back with a different shape or dtype"
        x, y = t.detach().cpu().contiguous().reshape(-1), a.contiguous().reshape(-1)
        if not torch.equal(x.view(torch.uint8) if x.numel() else x, y.view(torch.uint8) if y.numel() else y):
            return f"input {k!r} was modified by the call: kernels must not write into their inputs"
    return None


def _judge_outputs(ctx: Context, params: dict, outputs: list, kinds: list | None, ref) -> tuple[bool, str, dict]:
    spec = ctx.spec
    expected = spec.outputs(params)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    if len(outputs) != len(expected):
        return False, f"returned {len(outputs)} output(s), expected {len(expected)}", {}
    stats = {}
    messages = []
    for i, ((shape, dt, *_), tol, out, r) in enumerate(zip(expected, spec.tolerances_for(params), outputs, refs)):
        label = f"output {i}: " if len(expected) > 1 else ""
        if out is None:
            kind = kinds[i] if kinds else "?"
            return False, f"{label}returned {kind}, expected a plain dense torch.Tensor", {}
        bad = check_output_type(out, shape, DTYPES[dt])
        if bad:
            return False, label + bad.message, {}
        c = compare(out, r, tol)
        stats[f"rel_err{i}"] = c.rel_fro_err
        if not c.ok:
            advice = spec.hints(c.kind, params) if spec.hints else None
            text = c.message.split(" Hint: ")[0] + f" Hint: {advice}" if advice else c.message
            return False, label + text, stats
        messages.append(label + c.message)
    return True, "; ".join(messages), stats


def _correctness_check(case: Case) -> Callable:
    def run(p: Planned, ctx: Context) -> CheckResult:
        spec = ctx.spec
        if ctx.entry_missing(p.entry):
            return _result(ctx, p, "fail", f"missing student file(s) {sorted(ctx.entry_missing(p.entry))}")
        params = dict(case.params)
        last = ""
        worst = 0.0
        for trial in range(case.trials):
            seed = derive_seed(ctx.seed, spec.id, case.name, trial)
            msg = {"cmd": "check", "entry": case.entry, "params": params, "seed": seed}
            try:
                reply = ctx.worker.request(msg, spec.time_limit_s, f"running {case.entry} on {case.name}")
            except StudentFailure as exc:
                return _result(ctx, p, "fail", str(exc))
            if reply.get("status") != "ok":
                return _result(ctx, p, "fail", _error_text(reply))
            ref_device = "cuda" if ctx.tier == "gpu" else "cpu"
            inputs = make(spec, params, seed, ref_device)
            changed = _inputs_unchanged(inputs, reply["inputs_after"])
            if changed:
                return _result(ctx, p, "fail", changed)
            ref = spec.reference(inputs, params)
            ok, text, stats = _judge_outputs(ctx, params, reply["outputs"], reply.get("kinds"), ref)
            if not ok:
                return _result(ctx, p, "fail", f"trial {trial + 1}/{case.trials} (seed {seed}): {text}")
            worst = max([worst] + list(stats.values()))
            last = text
        return _result(ctx, p, "pass", f"{case.trials} trial(s); {last}", rel_err=worst)
    return run


def measure(ctx: Context, bench: Benchmark, rounds: int = BENCH_ROUNDS, reps: int = BENCH_REPS) -> dict:
    """The one benchmark protocol. The student's entry and the baseline are timed by the same harness
    (worker.do_bench_run) in two sibling processes, batch by batch in turn: calls back to back, L2
    flushed before each, events around each, one device-wide sync per batch, inputs rotating over
    seeded sets. The student's reported times are then bounded by the batches' wall time on this
    process's clock (each batch ends in a device-wide sync): a patched timer or work on an
    unsynchronized side stream reports less than that leaves, and fails."""
    spec = ctx.spec
    params = dict(bench.params)
    seeds = [derive_seed(ctx.seed, spec.id, bench.name, "set", i) for i in range(BENCH_INPUT_SETS)]
    timers = {"student": (ctx.worker, bench.entry), "base": (ctx.baseline_worker(), BASELINE + bench.baseline)}
    hold = spin_cycles(HOST_SLACK_MS) if ctx.device == "cuda" else 0
    salted = SALT_TIMED_INPUTS and bool(spec.salt)
    for who, (w, entry) in timers.items():
        setup = {"cmd": "bench_setup", "entry": entry, "params": params, "seeds": seeds,
                 "flush_bytes": L2_FLUSH_BYTES if ctx.device == "cuda" else 0, "hold_cycles": hold,
                 "warmup": BENCH_WARMUP, "warmup_s": BENCH_WARMUP_S, "archive_reps": reps, "salt": salted}
        r = w.request(setup, 10 * spec.time_limit_s, f"warming up {entry} on {bench.name}")
        if r.get("status") != "ok":
            return {"error": ("" if who == "student" else "baseline failed: ") + _error_text(r)}

    empty_batch = []        # a batch of zero calls: the round trip and the syncs around a batch
    for _ in range(5):
        t0 = time.perf_counter()
        ctx.worker.request({"cmd": "bench_run", "start": 0, "reps": 0}, 30, "running an empty batch")
        empty_batch.append((time.perf_counter() - t0) * 1e3)
    times = {"student": [], "base": []}
    batch_wall_ms = {"student": [], "base": []}   # per batch: wall time on this clock, less the round trip
    null_wall_ms = {"student": [], "base": []}    # per null batch (the same loop, no call): the same
    rep_seeds = ([derive_seed(ctx.seed, spec.id, bench.name, "rep", i) for i in range(rounds * reps)]
                 if spec.perturb or salted else [])
    # One output of every batch is re-checked; which call of it is drawn here from the system's randomness,
    # never sent anywhere, and used only after the batch has run. The worker archives the outputs of the
    # current batch only (a batch of a 256 MB output is 2.5 GB, not 60 x 256 MB), so a submission cannot
    # know which of its answers will be looked at. Every batch, because a batch's mean is scored
    # (scored_times): a batch of skipped work would otherwise be the fastest one.
    chance = random.SystemRandom()
    rechecked, fetched = [], []
    start = 0
    for rnd in range(rounds):
        for who, (w, entry) in timers.items():
            t0 = time.perf_counter()
            r = w.request({"cmd": "bench_run", "start": start, "reps": reps,
                           "rep_seeds": rep_seeds[start:start + reps]}, reps * spec.time_limit_s,
                          f"timing {entry} on {bench.name}")
            batch_wall_ms[who].append((time.perf_counter() - t0) * 1e3 - statistics.median(empty_batch))
            if r.get("status") != "ok":
                return {"error": ("" if who == "student" else "baseline failed: ") + _error_text(r)}
            if r.get("persisting_l2_bytes"):
                return {"error": f"invalid timing: a timed call left {r['persisting_l2_bytes']} bytes of L2 set aside for "
                                 "persisting accesses (cudaLimitPersistingL2CacheSize): data kept there survives the "
                                 "grader's L2 flush. Leave the L2 set-aside at 0"}
            if r.get("bad_output"):
                return {"error": f"{r['bad_output']}: expected plain tensors of the declared shape and dtype"}
            ts = r.get("times_ms")
            if not isinstance(ts, list) or len(ts) != reps or not all(isinstance(t, (int, float)) and t >= 0 for t in ts):
                return {"error": f"the {who} process reported malformed timings"}
            times[who] += [float(t) for t in ts]
            if who == "student" and reps:
                rep = start + chance.randrange(reps)
                outputs, err = fetch_timed_output(ctx, rep, reps)
                if err:
                    return {"error": err}
                fetched.append((rep, outputs))
        # The null batches: each process's loop as above with no call (flush, spin, salt, archive copy, the
        # syncs and the round trip): what a batch costs that is not the call's, on this clock
        for who, (w, entry) in timers.items():
            t0 = time.perf_counter()
            r = w.request({"cmd": "bench_run", "start": start, "reps": reps, "null": True,
                           "rep_seeds": rep_seeds[start:start + reps]}, reps * spec.time_limit_s,
                          f"timing the harness alone on {bench.name}")
            null_wall_ms[who].append((time.perf_counter() - t0) * 1e3 - statistics.median(empty_batch))
            if r.get("status") != "ok":
                return {"error": ("" if who == "student" else "baseline failed: ") + _error_text(r)}
        start += reps
    # Judged after the last batch: references computed here between batches put this process's GPU work
    # next to the timed calls (on the H100, batch means of 10-30 us kernels rose by 20-60 us when every
    # batch was judged in between, 2026-11-28).
    for rep, outputs in fetched:
        wrong = judge_timed_output(ctx, bench, rep, outputs, seeds, rep_seeds, salted)
        if wrong:
            return {"error": wrong}
        rechecked.append(rep)
    del fetched
    ctx.baseline_worker().request({"cmd": "bench_clear"}, 60, "freeing baseline inputs")
    # What the wall clock leaves for the student's calls, batch by batch: batch wall time minus the round
    # trip and the per-call flush and archive copy (timed here on the same GPU). Every batch ends in a
    # device-wide sync, so work on side streams is inside it; a patched timer cannot touch this clock.
    # Compared as medians over batches, reported vs wall, so that one disturbed batch (a clock ramp, a
    # host hiccup) can neither fail an honest kernel nor hide a cheat that is present in every batch.
    # The harness's own cost per call, measured: each process's median null batch. (It replaced a model,
    # flush + spin + salt + archive copy timed in this process, which left an honest lab01 copy kernel
    # 0.23-0.25 ms where it reported 0.145 on the H200: BENCHMARKS.md, "The H200, session 9".)
    per_batch = {}
    for who in ("student", "base"):
        walls = batch_wall_ms[who]
        null = statistics.median(null_wall_ms[who]) / reps
        per_batch[who] = ([w / reps - null for w in walls],
                          [statistics.fmean(times[who][i * reps:(i + 1) * reps]) for i in range(len(walls))])
    wall_left, reported = per_batch["student"]
    # The trusted baseline's own gap between wall time and reported time: host work of the timing loop
    # that is not hidden behind GPU work. It is ~0 for GPU-bound calls and ~0.1 ms per call where the lab's
    # call synchronizes first (lab01's launch-bound step: the CPU cannot run ahead, so the loop's event,
    # flush and archive launches are serialized with the call). The student is allowed the same gap.
    base_gap = [w - r for w, r in zip(*per_batch["base"])]
    return {"student": times["student"], "base": times["base"], "reps_done": start,
            "wall_per_call_ms": statistics.median(wall_left), "reported_per_call_ms": statistics.median(reported),
            "batch_wall_left_ms": wall_left, "batch_reported_ms": reported, "base_gap_ms": base_gap,
            "base_batch_reported_ms": per_batch["base"][1], "seeds": seeds, "rep_seeds": rep_seeds,
            "rechecked": rechecked, "host_bound": bench.host_bound,
            "null_per_call_ms": {who: statistics.median(v) / reps for who, v in null_wall_ms.items()}}


def scored_times(m: dict) -> tuple[float, float, str]:
    """The student's and the baseline's time per call: medians over calls, unless the student's batches
    carry work that the median call does not. A submission that computes a whole batch in its first call
    and hands out the rest has a clone for its median call; its typical (median) batch mean then exceeds
    the median call by UNEVEN_CALLS x and by more than UNEVEN_MARGIN_MS, and both sides are scored on
    their median batch mean, which counts every call's work. The absolute margin is for honest calls the
    host delays (the GPU then idles inside the call's events): on the H100 host that added 8-26 us to the
    median batch mean of lab 10's 12-90 us kernels (2026-11-28). Below the margin such an exploit is not
    seen by timing: it needs to read its own worker's state, the residual README.md lists."""
    stu, base = statistics.median(m["student"]), statistics.median(m["base"])
    stu_mean = statistics.median(m["batch_reported_ms"]) if m.get("batch_reported_ms") else stu
    base_mean = statistics.median(m["base_batch_reported_ms"]) if m.get("base_batch_reported_ms") else base
    if _uneven(m["student"], m.get("batch_reported_ms", [])) or stu <= 0:
        return stu_mean, base_mean, (f" (scored on batch means: the median call took {stu:.4f} ms but calls "
                                     f"averaged {stu_mean:.4f} ms per batch, so some calls did others' work)")
    return stu, base, ""


_SPIN = {}


def spin_cycles(ms: float) -> int:
    """Cycles of torch.cuda._sleep that keep this GPU busy for about `ms` (calibrated once, here: the
    grading process decides them and times them; the student's process only runs them)."""
    if "per_ms" not in _SPIN:
        # An idle H100 sits at 345 MHz: spin ~0.1 s first so the clock ramps up, then keep the fastest
        # rate seen. A later, slower clock only makes the spin longer (more slack, never less).
        n, rates = 2_000_000, []
        t_end = time.perf_counter() + 0.1
        while time.perf_counter() < t_end:
            torch.cuda._sleep(n)
            torch.cuda.synchronize()
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.cuda._sleep(n)
            e.record()
            e.synchronize()
            rates.append(n / max(s.elapsed_time(e), 1e-3))
        _SPIN["per_ms"] = max(rates)
    return int(ms * _SPIN["per_ms"])


def fetch_timed_output(ctx: Context, rep: int, archived: int) -> tuple[list | None, str | None]:
    """Timed call `rep`'s outputs, from the worker's archive of the batch just run (slot rep % archived),
    as host tensors: (outputs, None) or (None, why not)."""
    r = ctx.worker.request({"cmd": "bench_fetch", "rep": rep % archived}, 120, "returning a timed output")
    if r.get("status") != "ok":
        return None, _error_text(r)
    return r["outputs"], None


def judge_timed_output(ctx: Context, bench: Benchmark, rep: int, outputs: list, seeds: list,
                       rep_seeds: list, salted: bool = False) -> str | None:
    """Timed outputs are re-checked: every call must be right, not only the first. Judges timed call
    `rep`'s outputs against the reference for the inputs that call saw. Returns why it is wrong, or None."""
    spec, params = ctx.spec, dict(bench.params)
    seed = seeds[rep % len(seeds)]
    inputs = make(spec, params, seed, ctx.device)
    name = salted_input(spec, inputs) if salted else None
    plan = salt_plan(inputs[name], seed, ctx.spec.salt_scale) if name else None      # from the set as made, as the worker does
    if rep_seeds and spec.perturb:
        inputs = spec.perturb(inputs, params, torch.Generator().manual_seed(rep_seeds[rep]))
    if plan is not None:
        apply_salt(inputs[name], plan, rep_seeds[rep])
    ref = spec.reference(inputs, params)
    ok, text, _ = _judge_outputs(ctx, params, outputs, None, ref)
    del inputs, ref
    if not ok:
        return (f"timed call #{rep} returned a wrong result: {text}. Every timed call is checked, not just "
                "the first one")
    return None


def _speed_check(bench: Benchmark) -> Callable:
    def run(p: Planned, ctx: Context) -> CheckResult:
        spec = ctx.spec
        if ctx.tier != "gpu":
            r = _result(ctx, p, "skip", f"not graded: no GPU ({p.max_points:g} points on the GPU tier)")
            r.max_points = 0.0
            return r
        if ctx.entry_missing(p.entry):
            return _result(ctx, p, "fail", f"missing student file(s) {sorted(ctx.entry_missing(p.entry))}")
        params = dict(bench.params)
        # tier edges for this GPU model (grader/calibration): the same fraction of what the reference
        # solution reaches here as on the reference GPU
        scale, cal_note = calibration.factor(ctx.env.gpu, spec.id, bench.name)
        edges = [(round(t.min_ratio * scale, 3), t.fraction) for t in bench.tiers]
        host_ms = hardware.host_loop_ms() if bench.host_bound else None
        try:
            m = measure(ctx, bench)
            if "error" in m:
                return _result(ctx, p, "fail", m["error"])
            retry, first_run = "", None
            if disturbed(m):
                first_run = _first_run(m)
                # Uneven batches on either side, or the wall clock ahead of the events: a cheat does this in
                # every run, an honest kernel when something else held the host or the GPU (H100,
                # 2026-11-28: one lab 10 benchmark's student AND baseline calls ran 2x-50x slow for a few
                # batches). One fresh measurement, which then stands alone.
                m = measure(ctx, bench)
                if "error" in m:
                    return _result(ctx, p, "fail", m["error"])
                retry = " (measured twice: the first run was disturbed)"
            stu_ms, base_ms, note = scored_times(m)
            ratio = base_ms / stu_ms if stu_ms > 0 else float("inf")
            if any(abs(ratio - edge) <= TIER_EDGE * edge for edge, _ in edges):
                more = measure(ctx, bench)
                if "error" in more:
                    return _result(ctx, p, "fail", more["error"])
                m["student"] += more["student"]
                m["base"] += more["base"]
                for key in ("batch_wall_left_ms", "batch_reported_ms", "base_gap_ms", "base_batch_reported_ms"):
                    m[key] += more[key]
                m["wall_per_call_ms"] = statistics.median(m["batch_wall_left_ms"])
                m["reported_per_call_ms"] = statistics.median(m["batch_reported_ms"])
                stu_ms, base_ms, note = scored_times(m)
                ratio = base_ms / stu_ms if stu_ms > 0 else float("inf")
                note += " (re-measured: near a tier edge)"
            note += retry
            ctx.worker.request({"cmd": "bench_clear"}, 60, "freeing benchmark inputs")
        except StudentFailure as exc:
            return _result(ctx, p, "fail", str(exc))
        finally:
            torch.cuda.empty_cache()

        flops = spec.flops(params) if spec.flops else None
        nbytes = spec.bytes_moved(params) if spec.bytes_moved else None
        floor = hardware.floor_ms(ctx.env.gpu, flops, nbytes, spec.compute_unit(params))
        details = {"student_ms": stu_ms, "baseline_ms": base_ms, "ratio": ratio, "floor_ms": floor,
                   "student_iqr_ms": _iqr(m["student"]), "baseline_iqr_ms": _iqr(m["base"]),
                   "calls_timed": len(m["student"])}
        rate = ""
        if flops:
            details["student_tflops"] = flops / stu_ms / 1e9
            details["baseline_tflops"] = flops / base_ms / 1e9
            rate += f", {details['student_tflops']:.1f} vs {details['baseline_tflops']:.1f} TFLOP/s"
        if nbytes:
            details["student_gbps"] = nbytes / stu_ms / 1e6
            details["baseline_gbps"] = nbytes / base_ms / 1e6
            rate += f", {details['student_gbps']:.0f} vs {details['baseline_gbps']:.0f} GB/s"
        timing = f"{stu_ms:.4f} ms vs {bench.baseline} {base_ms:.4f} ms{rate}"
        for key in ("wall_per_call_ms", "reported_per_call_ms", "batch_wall_left_ms", "batch_reported_ms"):
            details[key] = m[key]
        if "null_per_call_ms" in m:
            details["null_per_call_ms"] = m["null_per_call_ms"]
        if first_run:
            details["first_run"] = first_run    # the disturbed measurement that was not scored
        if host_ms is not None:
            details["host_loop_ms"] = host_ms
            start = getattr(ctx.env, "host_loop_ms", 0.0)
            note += (f" (host-bound: the ratio follows the host CPU's speed; host loop {host_ms:.1f} ms"
                     + (f", {start:.1f} ms at the grade's start" if start else "") + ")")
        mean_ms = m["reported_per_call_ms"]
        base_gap = _base_gap(m)
        details["baseline_host_gap_ms"] = base_gap
        if _wall_disagrees(m):
            return _result(ctx, p, "fail", f"invalid timing: the calls report {mean_ms:.4f} ms per call (median "
                                           f"batch), but the grader's own clock leaves {m['wall_per_call_ms']:.4f} ms per call (work "
                                           f"on an unsynchronized stream, or a patched timer; another process busy on the same GPU "
                                           f"also lands here: grade on an idle GPU); {timing}", **details)
        if stu_ms < 0.95 * floor:
            return _result(ctx, p, "fail", f"invalid timing: {stu_ms:.4f} ms is below the physical floor "
                                           f"{floor:.4f} ms for this GPU (roofline); {timing}", **details)
        details["tier_scale"] = scale
        frac = max([f for edge, f in edges if ratio >= edge], default=0.0)
        tiers = ", ".join(f">={edge:g}x: {f:.0%}" for edge, f in edges) + (f" ({cal_note})" if cal_note else "")
        status = "pass" if frac >= 1.0 else "fail"
        return _result(ctx, p, status, f"{ratio:.2f}x {bench.baseline}{note}: {timing}; tiers {tiers}",
                       points=bench.points * frac, **details)
    return run


def _first_run(m: dict) -> dict:
    """What a disturbed measurement showed (kept in the report; the repeat is scored): its would-be times,
    spreads and why it counted as disturbed. Data for choosing a rule when the repeat is disturbed too
    (lab01's launch-bound step on the H200, 2026-11-28: both runs disturbed, 7.05x then 5.33x)."""
    stu_ms, base_ms, note = scored_times(m)
    why = [w for w, hit in (("student uneven", _uneven(m["student"], m.get("batch_reported_ms", []))),
                            ("baseline uneven", _uneven(m["base"], m.get("base_batch_reported_ms", []))),
                            ("wall clock ahead", _wall_disagrees(m))) if hit]
    return {"student_ms": stu_ms, "baseline_ms": base_ms, "ratio": base_ms / stu_ms if stu_ms > 0 else None,
            "student_iqr_ms": _iqr(m["student"]), "baseline_iqr_ms": _iqr(m["base"]), "why": why,
            "batch_reported_ms": m.get("batch_reported_ms"), "base_batch_reported_ms": m.get("base_batch_reported_ms")}


def _base_gap(m: dict) -> float:
    """The trusted baseline's own gap between wall and reported time per call: all of it where the benchmark
    is host-bound (the CPU's work between calls is not hidden there), at most BASE_GAP_CAP_MS elsewhere."""
    gap = max(0.0, statistics.median(m["base_gap_ms"])) if m.get("base_gap_ms") else 0.0
    return gap if m.get("host_bound") else min(gap, BASE_GAP_CAP_MS)


def _wall_disagrees(m: dict) -> bool:
    """The grader's own clock leaves more time per call than the events report (beyond the baseline's gap).
    Host-bound benchmarks keep the looser rule of sessions 2-8 (0.8 x wall - 80 us - the baseline's whole
    gap): their calls wait for the host, and the student's host work is not the baseline's (H200,
    2026-11-29: lab01's honest fused step fell 53 us and then 119 us short, the eager baseline 39 and 15)."""
    if m.get("host_bound"):
        return m["reported_per_call_ms"] < HOST_BOUND_AGREEMENT * m["wall_per_call_ms"] - HOST_BOUND_SLACK_MS - _base_gap(m)
    return m["reported_per_call_ms"] < WALL_AGREEMENT * m["wall_per_call_ms"] - WALL_SLACK_MS - _base_gap(m)


def _uneven(calls: list[float], batch_means: list[float]) -> bool:
    if not calls or not batch_means:
        return False
    call, mean = statistics.median(calls), statistics.median(batch_means)
    return call <= 0 or (mean > UNEVEN_CALLS * call and mean - call > UNEVEN_MARGIN_MS)


def disturbed(m: dict) -> bool:
    """A measurement worth repeating once: the student's or the baseline's batches uneven (scored_times),
    or the wall clock ahead of the events."""
    return (_uneven(m["student"], m.get("batch_reported_ms", [])) or
            _uneven(m["base"], m.get("base_batch_reported_ms", [])) or _wall_disagrees(m))


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [min(xs), 0, max(xs)]
    return q[2] - q[0]


# ---- planning -------------------------------------------------------------------------------------

def plan(spec: LabSpec, tier: str, seed: int = 0) -> list[Planned]:
    """Every check for this tier, in order, each with a stable readable name."""
    checks = [Planned("files", "files", "", 0.0, _files_check)]
    for src in spec.cuda_sources:
        checks.append(Planned(f"compile[{src}]", "compile", "", 0.0, _compile_check(src)))
    cases = [c for c in spec.all_cases(seed) if tier in c.tiers]
    public = [c for c in spec.cases]
    for name, e in spec.entries.items():
        entry_cases = [c for c in cases if c.entry == name]
        if e.kind == "cuda" and tier == "cpu":
            checks.append(Planned(f"{name}[implemented]", "implemented", name, 0.0, _implemented_check))
            continue
        if entry_cases and (spec.forbidden_ops or (spec.forbidden_kernels and tier == "gpu")
                            or (e.own_kernel and e.kind in ("triton", "cuda"))):
            checks.append(Planned(f"{name}[audit]", "audit", name, 0.0, _audit_check(entry_cases[0])))
        hidden = 0
        for c in entry_cases:
            label = c.name
            if seed != 0 and c not in public:
                # a secret seed's shapes stay secret: a report a student sees must not name them
                hidden += 1
                label = f"hidden-{hidden}"
            fn = _correctness_check(c)
            checks.append(Planned(f"{name}[{label}]", "correctness", name, spec.correctness_points,
                                  _redacted(fn) if label != c.name else fn))
    for b in spec.benchmarks:
        checks.append(Planned(f"speed[{b.name}]", "speed", b.entry, b.points, _speed_check(b)))
    return checks


def _redacted(run: Callable) -> Callable:
    """A hidden case's result without its shapes (tuples of sizes, AxBxC) and element indices."""
    def wrapped(p: Planned, ctx: Context) -> CheckResult:
        r = run(p, ctx)
        r.message = re.sub(r"\(\d+(?:, ?\d+)*,?\)|\b\d+(?:x\d+)+\b", "(hidden)", r.message)
        return r
    return wrapped


def pick_tier(cpu: bool) -> str:
    return "cpu" if cpu or not hardware.gpu_tier_available() else "gpu"


def grade(lab: str, source: str | Path = "student", cpu: bool = False, seed: int = 0,
          only: Iterable[str] | None = None, on_check: Callable[[CheckResult], None] | None = None,
          on_start: Callable[[Planned], None] | None = None) -> LabResult:
    spec = get(lab)
    tier = pick_tier(cpu)
    files = resolve_files(spec, source)
    ctx = Context(spec, files, tier, seed)
    checks = plan(spec, tier, seed)
    if only:
        pats = list(only)
        # The files check and an entry's audit always run: filtering must not let a library call through.
        keep = {c.entry for c in checks if any(p in c.name for p in pats)}
        checks = [c for c in checks if c.group == "files" or (c.group == "audit" and c.entry in keep)
                  or any(p in c.name for p in pats)]
    t0 = time.perf_counter()
    results = []
    try:
        for p in checks:
            if on_start:
                on_start(p)
            t1 = time.perf_counter()
            try:
                r = p.run(p, ctx)
            except StudentFailure as exc:
                r = _result(ctx, p, "fail", str(exc))
            r.seconds = time.perf_counter() - t1
            results.append(r)
            if on_check:
                on_check(r)
    finally:
        ctx.close()
    env = ctx.env.as_dict()
    env["tier_reason"] = "--cpu" if (cpu and hardware.gpu_tier_available()) else ("CUDA" if tier == "gpu" else "no CUDA")
    env["worker_restarts"] = ctx.worker.restarts
    return LabResult(spec.id, spec.title, str(source), tier, env, results, time.perf_counter() - t0)
