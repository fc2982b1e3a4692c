"""A lab, described as data: what the student writes, how inputs are made, what is correct, what is fast.

Each lab has one spec module in grader/labs/ that builds a `LabSpec`. The grader reads nothing else
about a lab. Functions in a spec (input generator, reference, entry loader) are plain and
deterministic: the student's process and the grading process both call `make_inputs` with the same
seed and must get bit-identical tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

TIERS = ("cpu", "gpu")
RESERVED_CHECK_NAMES = ("audit", "implemented")   # entry[audit], entry[implemented] are grader checks


@dataclass(frozen=True)
class Tolerance:
    """An element passes when |out - ref| <= atol_rms * rms(ref) + rtol * |ref|.

    atol is in units of the reference's RMS so one number works at any input scale: an output whose
    every element carries the rounding of its storage dtype is within rtol, while sums whose terms
    cancel (entries near zero) are judged against the size of the typical entry, not their own.
    """

    rtol: float
    atol_rms: float

    def __post_init__(self):
        if not (0 <= self.rtol < 1 and 0 <= self.atol_rms < 1):
            raise ValueError(f"tolerance out of range: {self}")


@dataclass(frozen=True)
class Case:
    """One correctness case: an entry point called on inputs made from `params`."""

    name: str                      # readable id, e.g. "fp16-257x129x200-transA"
    entry: str                     # key into LabSpec.entries
    params: Mapping[str, Any]      # passed to make_inputs / reference / output_shape
    tiers: tuple[str, ...] = TIERS  # where this case runs
    trials: int = 2                # fresh seeded inputs per trial

    @property
    def dtype(self) -> str:
        return self.params["dtype"]


@dataclass(frozen=True)
class SpeedTier:
    """Reaching `min_ratio` = baseline_time / student_time earns `fraction` of the benchmark's points."""

    min_ratio: float
    fraction: float


@dataclass(frozen=True)
class Benchmark:
    name: str
    entry: str
    params: Mapping[str, Any]
    baseline: str                       # key into LabSpec.baselines
    tiers: tuple[SpeedTier, ...]        # ascending min_ratio
    points: float = 1.0
    target_note: str = ""               # what the reference solution reaches, for the report
    # Both sides time mostly host work (Python, launches, syncs): the ratio follows the host CPU's speed,
    # which varied 2x between processes on the H200's VM (BENCHMARKS.md, session 8). The report then records
    # the host's speed next to the ratio (details.host_loop_ms) and says so in the message, and the wall
    # bound allows it more (runner._wall_disagrees: the student's host work is not the baseline's).
    host_bound: bool = False


@dataclass(frozen=True)
class EntryPoint:
    """A function the student provides (or completes), loaded from the student's files."""

    name: str
    files: tuple[str, ...]         # student files it depends on (relative to the lab folder)
    kind: str                      # "triton" | "cuda" | "python"
    doc: str = ""
    symbol: str = ""               # the kernel's name in a .cu file (kind "cuda")
    # The audited call must launch a kernel written in the student's files: for "triton", a @triton.jit
    # function defined there (by name, on both tiers); for "cuda", `symbol` (GPU tier). Off only where
    # the exercise accepts other routes (lab01's fused_step: a CUDA graph of torch ops is a valid answer).
    own_kernel: bool = True


@dataclass
class LabSpec:
    id: str                                   # "lab02"
    title: str
    path: str                                 # "stage1_foundations/lab02_tiled_matmul"
    seed_topic: str                           # which roadmap topic it covers
    student_files: tuple[str, ...]
    entries: dict[str, EntryPoint]
    load_entry: Callable[[str, Mapping[str, Path]], Callable]   # (entry name, student file paths) -> fn
    make_inputs: Callable[[Mapping[str, Any], torch.Generator, str], dict[str, torch.Tensor]]
    call: Callable[[Callable, dict[str, torch.Tensor], Mapping[str, Any]], Any]  # how to call an entry
    reference: Callable[[dict[str, torch.Tensor], Mapping[str, Any]], torch.Tensor]
    # [(shape, dtype name)] or [(shape, dtype name, tolerance key)] when an output needs its own tolerance
    outputs: Callable[[Mapping[str, Any]], list[tuple]]
    tolerances: dict[str, Tolerance]          # per output dtype name
    cases: list[Case]
    benchmarks: list[Benchmark] = field(default_factory=list)
    baselines: dict[str, Callable] = field(default_factory=dict)   # name -> fn(inputs, params) -> out
    flops: Callable[[Mapping[str, Any]], float] | None = None
    bytes_moved: Callable[[Mapping[str, Any]], float] | None = None
    compute_unit: Callable[[Mapping[str, Any]], str] = lambda p: "tensor_" + p["dtype"]
    forbidden_kernels: tuple[str, ...] = ()   # substrings of GPU kernel names the student may not launch
    cuda_sources: tuple[str, ...] = ()        # student .cu files compile-checked on every tier
    todo_marker: str = "LAB_TODO("            # a TODO left in a .cu kernel body
    hints: Callable[[str, Mapping[str, Any]], str] | None = None   # (failure kind, params) -> advice
    time_limit_s: float = 120.0               # per student call (CPU interpreter included)
    correctness_points: float = 1.0           # per case
    sweep: Callable[[str], list[Mapping[str, Any]]] | None = None  # for `labs bench`: entry -> params list
    hidden_cases: Callable[[int], list[Case]] | None = None   # extra cases whose shapes come from the seed
    forbidden_ops: tuple[str, ...] = ()       # torch ops (profiler names, e.g. "aten::mm") the student may not call
    # aten ops whose CPU/CUDA kernels are replaced by an error in the student's process (not the baseline's):
    # a call fails however it is disguised (profiler detection, patched profiler), not only when audited
    blocked_ops: tuple[str, ...] = ()
    notebook: str | None = None               # notebook file name inside the lab folder
    # Fresh values for every timed call: (a set's inputs, params, generator seeded for this call) -> the
    # inputs this call sees, new tensors, computed outside the timed region in both timing processes and
    # again by the grading process for the re-checked calls. Without it the timed calls rotate over three
    # fixed input sets, and an answer replayed per live input tensor is right every time (threat 2); that
    # only pays where the output is as large as the input (copying it is then as fast as the real op), so
    # only such labs set it (lab03). It must change every answer: lab03 adds a random column vector, since
    # its ops are invariant to per-row shifts (softmax) or affine maps (LayerNorm) and commute with
    # column permutations.
    perturb: Callable[[dict, Mapping[str, Any], torch.Generator], dict] | None = None
    # Timed inputs to salt (grader.inputs.salt_plan; used where runner.SALT_TIMED_INPUTS is on): the first
    # of these names that is a floating-point input of a benchmark gets one element per row rewritten on
    # the timing stream just before each timed call (after the flush and the spin), so that work on a side
    # stream that does not wait for the timing stream reads stale values and fails the re-check. Name an
    # input on which every output element depends row by row (A of a GEMM, q of attention, x of a norm).
    salt: tuple[str, ...] = ()
    # Multiplier of the salt's magnitude (4-16x the input's RMS at 1.0). Lower it where large values put
    # the outputs in a numerical regime the tolerances were not set for: lab04's bf16 gradients (one q
    # element of 16x RMS per row makes its softmax row peaky and multiplies the rounding of dS; on the H200,
    # 2026-11-28, one dq element of an honest backward landed at 1.24x its tolerance).
    salt_scale: float = 1.0

    def __post_init__(self):
        validate(self)

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)

    def tolerances_for(self, params: Mapping[str, Any]) -> list[Tolerance]:
        """One tolerance per output: its own key when outputs() names one, else its dtype's."""
        return [self.tolerances[key[0] if key else dt] for _, dt, *key in self.outputs(params)]

    def all_cases(self, seed: int) -> list[Case]:
        return self.cases + (self.hidden_cases(seed) if self.hidden_cases else [])


class SpecError(ValueError):
    pass


def validate(spec: LabSpec) -> None:
    """Fail early, with the lab and the field named, when a spec is inconsistent."""

    def bad(msg):
        raise SpecError(f"{spec.id}: {msg}")

    if not re.fullmatch(r"lab\d\d", spec.id):
        bad(f"id must look like lab02, got {spec.id!r}")
    names = [f"{c.entry}[{c.name}]" for c in spec.all_cases(0)]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        bad(f"duplicate cases {sorted(dup)}")
    bnames = [b.name for b in spec.benchmarks]
    if len(set(bnames)) != len(bnames):
        bad("duplicate benchmark names")
    for e in spec.entries.values():
        for f in e.files:
            if f not in spec.student_files:
                bad(f"entry {e.name} uses {f}, which is not a student file")
        if e.kind not in ("triton", "cuda", "python"):
            bad(f"entry {e.name}: unknown kind {e.kind!r}")
        if e.kind == "cuda" and not e.symbol:
            bad(f"entry {e.name}: a cuda entry names its kernel in `symbol`")
    for c in spec.all_cases(0):
        if c.name in RESERVED_CHECK_NAMES:
            bad(f"case name {c.name!r} is reserved for the grader's own checks")
        if c.entry not in spec.entries:
            bad(f"case {c.name} uses unknown entry {c.entry}")
        if "dtype" not in c.params:
            bad(f"case {c.name} has no dtype")
        for _, dt, *tol_key in spec.outputs(c.params):
            if dt not in DTYPES:
                bad(f"case {c.name}: unknown output dtype {dt}")
            if (tol_key[0] if tol_key else dt) not in spec.tolerances:
                bad(f"case {c.name}: no tolerance for output {dt} {tol_key}")
        if not set(c.tiers) <= set(TIERS) or not c.tiers:
            bad(f"case {c.name}: tiers must be a non-empty subset of {TIERS}")
        if c.trials < 1:
            bad(f"case {c.name}: trials must be >= 1")
    for b in spec.benchmarks:
        if b.entry not in spec.entries:
            bad(f"benchmark {b.name} uses unknown entry {b.entry}")
        if b.baseline not in spec.baselines:
            bad(f"benchmark {b.name} uses unknown baseline {b.baseline}")
        ratios = [t.min_ratio for t in b.tiers]
        if ratios != sorted(ratios) or not b.tiers:
            bad(f"benchmark {b.name}: tiers must be non-empty and ascending")
        if not all(0 < t.fraction <= 1 for t in b.tiers):
            bad(f"benchmark {b.name}: tier fractions must be in (0, 1]")
    for s in spec.cuda_sources:
        if s not in spec.student_files:
            bad(f"cuda source {s} is not a student file")
