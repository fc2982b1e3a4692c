"""Unit tests for the grader's parts: comparison, spec validation, the wire protocol, inputs, the roofline
floor, timing statistics, reports and CUDA source scanning. No student process is started here."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import statistics

import pytest
import torch
from rich.console import Console

from grader import cuda, hardware, protocol
from grader.isolation import StudentFailure, WorkerHandle, _poisons_context
from grader.compare import check_output_type, compare
from grader.inputs import derive_seed, make, realistic, with_layout
from grader.labs import get
from grader.report import gradescope, mode_line, table, write_json
from grader.runner import CheckResult, LabResult, _inputs_unchanged, _iqr, plan, resolve_files
from grader.spec import (DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpecError, SpeedTier, Tolerance,
                         validate)
from tests.conftest import REPO_ROOT

LAB02 = get("lab02")


# ---- grader.compare -----------------------------------------------------------------------------------

def _ref(shape=(64, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 0.5


TOL = Tolerance(rtol=1e-3, atol_rms=1e-4)


def test_compare_passes_within_tolerance():
    r = _ref()
    c = compare((r * (1 + 0.5 * TOL.rtol)).float(), r, TOL)
    assert c.ok and c.bad_count == 0 and c.kind == ""
    assert 0 < c.rel_fro_err < TOL.rtol


def test_compare_fails_just_outside_tolerance():
    r = _ref()
    c = compare(r * (1 + 3 * TOL.rtol), r, Tolerance(rtol=TOL.rtol, atol_rms=0.0))
    assert not c.ok and c.kind == "values" and c.bad_count == r.numel()


def test_compare_boundary_is_inclusive():
    """|out - ref| <= atol_rms * rms + rtol * |ref|: equality passes (values exact in binary)."""
    ref = torch.ones(4, 4, dtype=torch.float64)          # rms = 1
    tol = Tolerance(rtol=0.25, atol_rms=0.25)            # allowed = 0.5
    assert compare(ref + 0.5, ref, tol).ok
    assert compare(ref - 0.5, ref, tol).ok
    bumped = ref + 0.5
    bumped[2, 3] = 1.5 + 2 ** -20
    c = compare(bumped, ref, tol)
    assert not c.ok and c.bad_count == 1 and "[2, 3]" in c.message


def test_compare_all_nan_misses_are_unwritten():
    r = _ref()
    out = r.clone()
    out[-1, :] = float("nan")
    c = compare(out, r, TOL)
    assert not c.ok and c.kind == "unwritten" and c.bad_count == r.shape[1]
    assert "never written" in c.message and f"[{r.shape[0] - 1}, 0]" in c.message
    assert math.isinf(c.rel_fro_err)


def test_compare_nan_never_passes_whatever_the_tolerance():
    r = _ref()
    out = r.clone()
    out[0, 0] = float("nan")
    assert not compare(out, r, Tolerance(rtol=0.99, atol_rms=0.99)).ok


def test_compare_nan_mixed_with_wrong_values_is_kind_nan():
    r = _ref()
    out = r.clone()
    out[0, 0] = float("nan")
    out[1, 1] += 100
    c = compare(out, r, TOL)
    assert not c.ok and c.kind == "nan" and c.bad_count == 2


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_compare_inf_fails(bad):
    r = _ref()
    out = r.clone()
    out[3, 4] = bad
    c = compare(out, r, Tolerance(rtol=0.99, atol_rms=0.99))
    assert not c.ok and c.kind == "nan" and c.bad_count == 1 and "[3, 4]" in c.message


def test_compare_wrong_shape_fails():
    r = _ref((8, 8))
    c = compare(torch.zeros(8, 9), r, TOL)
    assert not c.ok and c.kind == "shape" and "(8, 9)" in c.message
    assert not compare(r.t()[:4], r, TOL).ok


def test_compare_atol_is_relative_to_rms_at_any_scale():
    r = _ref()
    err = torch.zeros_like(r)
    err[0, 0] = 0.5 * TOL.atol_rms * r.pow(2).mean().sqrt()     # half the absolute allowance
    tol = Tolerance(rtol=0.0, atol_rms=TOL.atol_rms)
    for scale in (1e-6, 1.0, 1e6):
        assert compare((r + err) * scale, r * scale, tol).ok, scale
        assert not compare((r + 3 * err) * scale, r * scale, tol).ok, scale


def test_compare_near_zero_entries_are_judged_against_rms():
    """A sum whose terms cancel (entry ~0) is judged against the typical entry, not its own size."""
    r = _ref()
    r[5, 5] = 1e-12
    out = r.clone()
    out[5, 5] = 1e-6                        # huge relative error, tiny next to rms ~3
    assert compare(out, r, TOL).ok


def test_compare_few_bad_elements_and_edges_are_named():
    r = _ref((100, 100))
    out = r.clone()
    out[99, 99] += 1.0
    c = compare(out, r, TOL)
    assert c.kind == "values" and "a few elements are off" in c.message
    c = compare(out, r, TOL, edge_of=lambda idx: idx[0] >= 96 or idx[1] >= 96)
    assert c.kind == "edge" and "partial tiles" in c.message


def test_compare_low_precision_outputs_against_fp64_reference():
    r = _ref()
    assert compare(r.half(), r, LAB02.tolerances["fp16"]).ok
    assert compare(r.bfloat16(), r, LAB02.tolerances["bf16"]).ok
    assert not compare(r.bfloat16(), r, LAB02.tolerances["fp16"]).ok      # bf16 rounding is too coarse for fp16
    assert not compare(r.half(), r, LAB02.tolerances["fp32"]).ok


def test_compare_empty_output_passes_and_broken_reference_raises():
    assert compare(torch.empty(0, 3), torch.empty(0, 3, dtype=torch.float64), TOL).ok
    with pytest.raises(RuntimeError, match="reference is not finite"):
        compare(torch.zeros(2), torch.tensor([0.0, float("nan")]), TOL)


def test_check_output_type():
    good = torch.zeros(2, 3)
    assert check_output_type(good, (2, 3), torch.float32) is None
    assert check_output_type(good.t().contiguous().t(), (2, 3), torch.float32) is None   # any strides

    class Sub(torch.Tensor):
        pass

    assert check_output_type(good.as_subclass(Sub), (2, 3), torch.float32).kind == "type"
    assert check_output_type(torch.nn.Parameter(good), (2, 3), torch.float32).kind == "type"
    assert check_output_type(good.numpy(), (2, 3), torch.float32).kind == "type"
    assert check_output_type(good, (3, 2), torch.float32).kind == "shape"
    assert check_output_type(good.double(), (2, 3), torch.float32).kind == "dtype"
    assert check_output_type(good.to_sparse(), (2, 3), torch.float32).kind == "type"


# ---- grader.spec.validate -----------------------------------------------------------------------------

def make_spec(**over) -> LabSpec:
    """A minimal valid spec, with fields replaced by `over`."""
    fields = dict(
        id="lab99", title="test lab", path="stage0/lab99_test", seed_topic="tests",
        student_files=("impl.py", "k.cu"),
        entries={"f": EntryPoint("f", ("impl.py",), "python"), "g": EntryPoint("g", ("k.cu",), "cuda", symbol="gk")},
        load_entry=lambda name, files: None,
        make_inputs=lambda p, gen: {"x": torch.randn(3, generator=gen)},
        call=lambda fn, inputs, p: fn(inputs["x"]),
        reference=lambda inputs, p: inputs["x"].double(),
        outputs=lambda p: [((3,), p["dtype"])],
        tolerances={"fp32": Tolerance(1e-5, 1e-5)},
        cases=[Case("a", "f", {"dtype": "fp32"}), Case("b", "f", {"dtype": "fp32"}, ("gpu",))],
        benchmarks=[Benchmark("big", "f", {"dtype": "fp32"}, "torch", (SpeedTier(0.5, 0.5), SpeedTier(1.0, 1.0)))],
        baselines={"torch": lambda inputs, p: inputs["x"]},
        cuda_sources=("k.cu",),
    )
    fields.update(over)
    return LabSpec(**fields)


def test_minimal_spec_is_valid():
    spec = make_spec()
    validate(spec)
    assert [p.name for p in plan(spec, "cpu")] == ["files", "compile[k.cu]", "f[a]", "g[implemented]", "speed[big]"]


def _bench(entry="f", baseline="torch", tiers=(SpeedTier(1, 1),)) -> Benchmark:
    return Benchmark("big", entry, {"dtype": "fp32"}, baseline, tiers)


BAD_SPECS = {
    "duplicate cases": dict(cases=[Case("a", "f", {"dtype": "fp32"}), Case("a", "f", {"dtype": "fp32"}, ("gpu",))]),
    "duplicate hidden case": dict(hidden_cases=lambda seed: [Case("a", "f", {"dtype": "fp32"})]),
    "unknown entry": dict(cases=[Case("a", "nope", {"dtype": "fp32"})]),
    "missing tolerance": dict(cases=[Case("a", "f", {"dtype": "fp16"})]),
    "no dtype": dict(cases=[Case("a", "f", {"n": 3})]),
    "bad tier": dict(cases=[Case("a", "f", {"dtype": "fp32"}, ("tpu",))]),
    "no tiers": dict(cases=[Case("a", "f", {"dtype": "fp32"}, ())]),
    "zero trials": dict(cases=[Case("a", "f", {"dtype": "fp32"}, trials=0)]),
    "bad id": dict(id="matmul"),
    "entry file not a student file": dict(entries={"f": EntryPoint("f", ("other.py",), "python")}, cuda_sources=()),
    "unknown kind": dict(entries={"f": EntryPoint("f", ("impl.py",), "rust")}),
    "cuda entry without symbol": dict(entries={"f": EntryPoint("f", ("impl.py",), "python"),
                                               "g": EntryPoint("g", ("k.cu",), "cuda")}),
    "benchmark unknown entry": dict(benchmarks=[_bench(entry="zz")]),
    "benchmark unknown baseline": dict(benchmarks=[_bench(baseline="cudnn")]),
    "tiers descending": dict(benchmarks=[_bench(tiers=(SpeedTier(1.0, 1.0), SpeedTier(0.5, 0.5)))]),
    "no speed tiers": dict(benchmarks=[_bench(tiers=())]),
    "zero fraction": dict(benchmarks=[_bench(tiers=(SpeedTier(1, 0.0),))]),
    "duplicate benchmarks": dict(benchmarks=[_bench(), _bench()]),
    "cuda source not a student file": dict(cuda_sources=("elsewhere.cu",)),
}


@pytest.mark.parametrize("what", sorted(BAD_SPECS))
def test_bad_spec_raises_spec_error_naming_the_lab(what):
    over = BAD_SPECS[what]
    with pytest.raises(SpecError) as e:
        make_spec(**over)
    assert over.get("id", "lab99") in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("rtol,atol", [(-1e-3, 0.0), (1.0, 0.0), (0.0, 1.5), (float("nan"), 0.0)])
def test_tolerance_out_of_range(rtol, atol):
    with pytest.raises(ValueError):
        Tolerance(rtol, atol)


@pytest.mark.parametrize("bad_id", ["lab2", "lab123"])
def test_spec_id_must_be_two_digits(bad_id):
    with pytest.raises(SpecError):
        make_spec(id=bad_id)


def test_case_names_cannot_shadow_check_names():
    with pytest.raises(SpecError):
        make_spec(cases=[Case("audit", "f", {"dtype": "fp32"})], forbidden_ops=("aten::mm",))


def test_lab02_plans_have_unique_names_on_both_tiers():
    for tier in ("cpu", "gpu"):
        for seed in (0, 1, 12345):
            names = [p.name for p in plan(LAB02, tier, seed)]
            assert len(names) == len(set(names)), (tier, seed)
    gpu = [p.name for p in plan(LAB02, "gpu")]
    assert "cuda_register_blocked[audit]" in gpu and "triton_matmul[bf16-1024x1024x1024]" in gpu
    cpu = [p.name for p in plan(LAB02, "cpu")]
    assert not any("bf16" in n for n in cpu if not n.startswith("speed["))   # the interpreter mishandles bf16


def test_hidden_cases_follow_the_seed():
    a, b = LAB02.hidden_cases(0), LAB02.hidden_cases(1)
    assert [c.name for c in a] == [c.name for c in LAB02.hidden_cases(0)]
    assert [c.name for c in a] != [c.name for c in b]


# ---- grader.protocol ----------------------------------------------------------------------------------

def roundtrip(obj):
    """send() then recv() over a real multiprocessing pipe. Payloads here are small enough for its buffer."""
    a, b = mp.Pipe()
    try:
        protocol.send(a, obj)
        assert b.poll(10), "nothing arrived"
        return protocol.recv(b)
    finally:
        a.close()
        b.close()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so NaN payloads and -0.0 compare exactly."""
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def _sample(dtype: torch.dtype, shape=(3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g).to(dtype)
        x.view(-1)[0] = float("nan")
        x.view(-1)[1] = -0.0
        return x
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_protocol_roundtrip_every_dtype(name):
    x = _sample(DTYPES[name])
    y = roundtrip({"t": x})["t"]
    assert type(y) is torch.Tensor and y.dtype == x.dtype and y.shape == x.shape and y.device.type == "cpu"
    assert torch.equal(_bits(y), _bits(x))


def test_protocol_roundtrip_non_contiguous_and_empty():
    base = torch.randn(6, 8)
    for x in (base.t(), base[:, ::2], base[1:5, 2:7], torch.empty(0, 5), torch.empty(3, 0, dtype=torch.int64)):
        y = roundtrip([x])[0]
        assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
        assert torch.equal(y, x)


def test_protocol_roundtrip_tensor_needing_grad():
    x = torch.randn(3, requires_grad=True)
    y = roundtrip(x)
    assert not y.requires_grad and torch.equal(y, x.detach())


@pytest.mark.parametrize("name", ["fp32", "fp16", "int64"])
def test_protocol_roundtrip_zero_dim(name):
    x = torch.tensor(3, dtype=DTYPES[name])
    y = roundtrip({"s": x})["s"]
    assert y.shape == () and y.dtype == x.dtype and torch.equal(y, x)


def test_protocol_roundtrip_nested_structures():
    t1, t2 = torch.arange(6).reshape(2, 3), torch.randn(4).half()
    msg = {"status": "ok", "n": 3, "x": 2.5, "flag": True, "none": None, "s": "héllo",
           "nested": {"list": [1, [t1, {"deep": t2}]], "tuple": (t2, "b")}, 7: "int key",
           "nan": float("nan"), "obj": object}
    got = roundtrip(msg)
    assert got["status"] == "ok" and got["n"] == 3 and got["x"] == 2.5 and got["flag"] is True
    assert got["none"] is None and got["s"] == "héllo"
    assert torch.equal(got["nested"]["list"][1][0], t1)
    assert torch.equal(got["nested"]["list"][1][1]["deep"], t2)
    assert isinstance(got["nested"]["tuple"], list) and torch.equal(got["nested"]["tuple"][0], t2)
    assert got["7"] == "int key"                                  # JSON keys are strings
    assert math.isnan(got["nan"])
    assert got["obj"] == repr(object)                             # never pickled: reduced to text


def _send_raw(header: dict, payloads: list[bytes]):
    a, b = mp.Pipe()
    a.send_bytes(json.dumps(header).encode())
    for p in payloads:
        a.send_bytes(p)
    return a, b


@pytest.mark.parametrize("header,payloads", [
    ({"t": {"__tensor__": 0, "dtype": "complex64", "shape": [1]}}, [b"\0" * 8]),
    ({"t": {"__tensor__": 0, "dtype": "object", "shape": [1]}}, [b"\0" * 8]),
    ({"t": {"__tensor__": 0, "dtype": "fp32", "shape": [3]}}, [b"\0" * 8]),          # size mismatch
])
def test_protocol_rejects_malformed_tensor_headers(header, payloads):
    a, b = _send_raw(header, payloads)
    try:
        with pytest.raises(Exception):
            protocol.recv(b)
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_protocol_moves_cuda_tensors_to_cpu():
    x = torch.randn(4, 4, device="cuda")
    y = roundtrip(x)
    assert y.device.type == "cpu" and torch.equal(y, x.cpu())


# ---- grader.inputs ------------------------------------------------------------------------------------

def test_derive_seed_is_stable_and_spread():
    assert derive_seed(0, "lab02", "case", 1) == derive_seed(0, "lab02", "case", 1)
    seeds = {derive_seed(s, "lab02", c, t) for s in (0, 1) for c in ("a", "b") for t in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2 ** 56 for s in seeds)


@pytest.mark.parametrize("params", [
    {"M": 33, "N": 47, "K": 5, "dtype": "fp16", "layout_a": "n", "layout_b": "n"},
    {"M": 50, "N": 70, "K": 90, "dtype": "fp32", "layout_a": "s", "layout_b": "t"},
])
def test_make_is_bit_identical_for_a_seed(params):
    x, y, z = (make(LAB02, params, s, "cpu") for s in (123, 123, 124))
    for k in x:
        assert x[k].stride() == y[k].stride() and x[k].shape == y[k].shape
        assert torch.equal(_bits(x[k]), _bits(y[k])), k
        assert not torch.equal(_bits(x[k]), _bits(z[k])), k


def test_realistic_is_never_trivial():
    g = torch.Generator().manual_seed(0)
    for shape in [(1,), (5,), (1, 96), (64, 64), (257, 200), (4, 8, 16)]:
        for dt in ("fp32", "fp16", "bf16"):
            x = realistic(shape, g, dt)
            assert x.dtype == DTYPES[dt] and tuple(x.shape) == shape
            assert torch.isfinite(x).all()
            assert (x != 0).float().mean() > 0.95, (shape, dt)
            if x.numel() > 1:
                assert x.float().std() > 0.1
    x = realistic((256, 256), torch.Generator().manual_seed(1), "fp32")
    row_std, row_mean = x.std(dim=1), x.mean(dim=1)
    assert row_std.max() / row_std.min() > 4          # per-row scales in [0.25, 4]
    assert row_mean.max() - row_mean.min() > 0.5      # per-row offsets
    assert x.abs().max() > 8 * row_std.median()       # rare x8 outliers


def test_with_layout_strides_and_values():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    n = with_layout(x, "n")
    assert n.is_contiguous() and torch.equal(n, x)
    t = with_layout(x, "t")
    assert t.stride() == (1, 3) and torch.equal(t, x)
    s = with_layout(x, "s")
    assert s.stride() == (8, 2) and torch.equal(s, x)
    wide = s.as_strided((3, 8), (8, 1), s.storage_offset())
    assert torch.isnan(wide[:, 1::2]).all()           # the gaps are poisoned: ignoring strides reads NaN
    with pytest.raises(ValueError):
        with_layout(x, "q")


# ---- grader.hardware ----------------------------------------------------------------------------------

def test_floor_ms_compute_bound():
    flops, nbytes = 2 * 4096 ** 3, 3 * 4096 ** 2 * 2
    got = hardware.floor_ms("NVIDIA H100 80GB HBM3", flops, nbytes, "tensor_bf16")
    assert got == pytest.approx(flops / 989e12 * 1e3)


def test_floor_ms_memory_bound_and_units():
    nbytes = 3.35e9                                                     # a millisecond of H100 SXM HBM
    assert hardware.floor_ms("NVIDIA H100 80GB HBM3", 1.0, nbytes, "fp32") == pytest.approx(1.0)
    assert hardware.floor_ms("NVIDIA H100 PCIe", None, 2.0e9, "fp32") == pytest.approx(1.0)
    assert hardware.floor_ms("NVIDIA H200", None, None, "fp32") == 0.0
    # an unknown unit takes the fastest rate, so the floor stays a lower bound
    assert hardware.floor_ms("NVIDIA H100 80GB HBM3", 1979e12, None, "mystery") == pytest.approx(1e3)


def test_unknown_gpu_floor_is_below_every_known_gpu():
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"):
        for unit in ("tensor_bf16", "fp32"):
            known = hardware.floor_ms(name, 1e12, 1e9, unit)
            assert hardware.floor_ms("Some Future GPU", 1e12, 1e9, unit) <= known


def test_peaks_match_device_names():
    assert hardware.peaks("NVIDIA H100 PCIe")[0] == 2.0e12
    assert hardware.peaks("NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert hardware.peaks("NVIDIA H200")[0] == 4.8e12
    assert hardware.peaks("NVIDIA A100-SXM4-80GB")[1]["fp32"] == 19.5e12
    assert hardware.peaks("Tesla T4") is hardware._FALLBACK


def test_environment_cpu_tier():
    env = hardware.environment("cpu", 7)
    assert env.tier == "cpu" and env.seed == 7 and env.gpu == "none" and env.torch == torch.__version__
    assert json.loads(json.dumps(env.as_dict()))["seed"] == 7


# ---- grader.runner helpers ----------------------------------------------------------------------------

def test_iqr():
    assert _iqr([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)     # exclusive quartiles 2.25 and 6.75
    assert _iqr([5.0] * 10) == 0.0
    assert _iqr([1.0, 3.0]) == 2.0                                   # short lists: the range
    assert _iqr([2.0]) == 0.0
    xs = [0.1, 0.11, 0.1, 0.12, 5.0, 0.1, 0.11, 0.1]                # an outlier barely moves it
    assert _iqr(xs) < 0.05 and statistics.median(xs) == pytest.approx(0.105)


def test_inputs_unchanged():
    g = torch.Generator().manual_seed(3)
    before = {"a": with_layout(realistic((8, 6), g, "fp32"), "s"), "b": realistic((6, 4), g, "fp16")}
    after = {k: v.contiguous().clone() for k, v in before.items()}
    assert _inputs_unchanged(before, after) is None
    changed = {k: v.clone() for k, v in after.items()}
    changed["b"][0, 0] += 1
    assert "'b' was modified" in _inputs_unchanged(before, changed)
    assert _inputs_unchanged({"z": torch.tensor([0.0, 1.0])}, {"z": torch.tensor([-0.0, 1.0])}) is not None  # bitwise
    assert "shape or dtype" in _inputs_unchanged(before, {"a": after["a"].double(), "b": after["b"]})
    assert "shape or dtype" in _inputs_unchanged(before, {"a": after["a"]})


def test_inputs_unchanged_zero_dim():
    x = torch.tensor(2.0)
    assert _inputs_unchanged({"s": x}, {"s": x.clone()}) is None


def test_resolve_files(tmp_path):
    sol = resolve_files(LAB02, "solutions")
    assert set(sol) == set(LAB02.student_files) and all(p.is_file() for p in sol.values())
    assert all("solutions" in p.parts for p in sol.values())
    stu = resolve_files(LAB02, "student")
    assert all(p.parent == REPO_ROOT / LAB02.path for p in stu.values())
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "triton_matmul.py").write_text("")
    files = resolve_files(LAB02, flat)
    assert files["triton_matmul.py"] == flat / "triton_matmul.py"
    nested = tmp_path / "nested" / LAB02.path
    nested.mkdir(parents=True)
    (nested / "matmul_kernels.cu").write_text("")
    files = resolve_files(LAB02, tmp_path / "nested")
    assert files["matmul_kernels.cu"] == nested / "matmul_kernels.cu"


# ---- grader.isolation ---------------------------------------------------------------------------------

class _DeadProcess:
    """A student process that has died but is not reaped yet: its exit code is known only after join()."""

    def __init__(self, code: int):
        self.code, self.joined = code, False

    @property
    def exitcode(self):
        return self.code if self.joined else None

    def is_alive(self):
        return not self.joined

    def join(self, timeout=None):
        self.joined = True

    def kill(self):
        pass


class _ClosedPipe:
    def poll(self, timeout=None):
        return True

    def recv_bytes(self, maxlength=None):
        raise EOFError

    def close(self):
        pass


def _crash_message(code: int) -> str:
    h = WorkerHandle("lab02", {}, "cpu", interpret=True)
    h.proc, h.conn = _DeadProcess(code), _ClosedPipe()
    with pytest.raises(StudentFailure) as e:
        h._receive(5, "running triton_matmul on fp32-64x64x64")
    return str(e.value)


def test_crash_is_a_student_failure_naming_the_step():
    msg = _crash_message(-11)
    assert "student process died while running triton_matmul on fp32-64x64x64" in msg


@pytest.mark.parametrize("code,needle", [(-11, "SIGSEGV"), (1, "exit code 1")])
def test_crash_message_names_the_signal_or_exit_code(code, needle):
    assert needle in _crash_message(code)


def test_cuda_errors_poison_the_context():
    assert _poisons_context({"type": "RuntimeError", "message": "CUDA error: an illegal memory access was encountered"})
    assert _poisons_context({"type": "torch.OutOfMemoryError", "message": "CUDA out of memory."})
    assert not _poisons_context({"type": "NotImplementedError", "message": "lab02: matmul_kernel is not written"})


# ---- grader.report ------------------------------------------------------------------------------------

def _check(name, group, status, points, max_points, message="m", **details):
    return CheckResult("lab02", name, group, "triton_matmul", status, points, max_points, message, details)


def _result() -> LabResult:
    env = hardware.environment("cpu", 0).as_dict()
    env["tier_reason"] = "no CUDA"
    checks = [
        _check("files", "files", "pass", 0, 0, "found 2 file(s)"),
        _check("triton_matmul[audit]", "audit", "fail", 0, 0, "called aten::mm [bold]x[/]"),
        _check("triton_matmul[fp16-64x64x64]", "correctness", "pass", 1, 1, "2 trial(s); ok"),
        _check("triton_matmul[fp32-33x47x5]", "correctness", "fail", 0, 1, "1/1551 elements wrong"),
        _check("speed[triton-bf16-4096]", "speed", "pass", 3, 3, "0.93x cublas", ratio=0.93456),
        _check("speed[triton-bf16-8192]", "speed", "fail", 1.5, 3, "0.6x cublas", ratio=0.6),
        _check("speed[cuda-smem]", "speed", "skip", 0, 0, "not graded: no GPU (1 points on the GPU tier)"),
    ]
    return LabResult("lab02", "Tiled matmul", "solutions", "cpu", env, checks, 1.0)


def test_lab_result_totals():
    r = _result()
    assert r.score == 5.5 and r.max_score == 8 and not r.passed
    d = r.as_dict()
    assert d["score"] == 5.5 and d["max_score"] == 8 and d["passed"] is False and len(d["checks"]) == 7


def test_gradescope_format():
    gs = gradescope([_result()])
    json.dumps(gs)
    assert {"score", "max_score", "tests", "leaderboard", "output", "visibility"} <= set(gs)
    assert gs["score"] == 5.5 and gs["max_score"] == 8
    names = [t["name"] for t in gs["tests"]]
    assert "lab02::speed[cuda-smem]" not in names                   # not graded here: not listed
    assert len(names) == 6 and names[0] == "lab02::files"
    for t in gs["tests"]:
        assert set(t) == {"name", "score", "max_score", "status", "output", "visibility"}
        assert t["status"] in ("passed", "failed") and t["visibility"] == "visible"
        assert isinstance(t["score"], (int, float)) and t["score"] <= t["max_score"]
    by = {t["name"]: t for t in gs["tests"]}
    assert by["lab02::triton_matmul[fp32-33x47x5]"]["status"] == "failed"
    assert by["lab02::speed[triton-bf16-8192]"]["score"] == 1.5
    assert gs["leaderboard"] == [{"name": "lab02 speed[triton-bf16-4096] (x baseline)", "value": 0.935},
                                 {"name": "lab02 speed[triton-bf16-8192] (x baseline)", "value": 0.6}]
    assert "CPU tier" in gs["output"]


def test_write_json_roundtrip(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json([_result()], path)
    (lab,) = json.loads(path.read_text())["labs"]
    assert lab["score"] == 5.5 and lab["checks"][4]["details"]["ratio"] == 0.93456


def test_table_prints_messages_literally():
    console = Console(record=True, width=250, color_system=None)
    table(_result(), console)
    text = console.export_text()
    assert "[bold]x[/]" in text                        # student text is escaped, never markup
    assert "lab02: 5.5/8 points; 3 passed, 3 failed, 1 not graded here" in text
    assert "lab02: CPU tier (no CUDA; torch" in text


def test_mode_line_gpu():
    r = dataclasses.replace(_result(), tier="gpu")
    r.env.update(gpu="NVIDIA H100 80GB HBM3", driver="550.54")
    assert "GPU tier on NVIDIA H100 80GB HBM3 (driver 550.54" in mode_line(r)


# ---- grader.cuda --------------------------------------------------------------------------------------

SRC = r'''
#define LAB_TODO(msg) return
extern "C" __global__ void first(float* x, int n) {
    if (n > 0) { x[0] = 1.0f; }
    for (int i = 0; i < n; ++i) { if (i) { x[i] = x[i - 1]; } }
}
extern "C" __global__ void __launch_bounds__(256) second(float* x) {
    LAB_TODO("lab99: second is not written yet");
}
extern "C" __global__ __launch_bounds__(128) void third(float* x) { x[0] = 3.0f; }
__global__ void first_variant(float* x) { LAB_TODO("lab99: variant"); }
'''


def test_kernel_body_matches_braces():
    body = cuda.kernel_body(SRC, "first")
    assert body.startswith("{") and body.endswith("}")
    assert body.count("{") == body.count("}") == 4 and "x[i - 1]" in body and "LAB_TODO" not in body


def test_kernel_body_with_launch_bounds_either_side():
    assert "LAB_TODO" in cuda.kernel_body(SRC, "second")
    assert cuda.kernel_body(SRC, "third").strip() == "{ x[0] = 3.0f; }"


def test_kernel_body_absent():
    assert cuda.kernel_body(SRC, "fourth") is None
    assert cuda.kernel_body(SRC, "firs") is None                 # a prefix is not the kernel


def test_todo_message():
    assert cuda.todo_message(SRC, "first") is None                # the TODO in first_variant is not first's
    assert cuda.todo_message(SRC, "second") == "lab99: second is not written yet"
    assert cuda.todo_message(SRC, "first_variant") == "lab99: variant"
    assert cuda.todo_message(SRC, "third") is None
    assert cuda.todo_message(SRC, "missing") == "kernel missing not found in the source"


def test_todo_message_on_lab02_sources():
    skel = (REPO_ROOT / LAB02.path / "matmul_kernels.cu").read_text()
    sol = (REPO_ROOT / "solutions" / LAB02.path / "matmul_kernels.cu").read_text()
    for name, e in LAB02.entries.items():
        if e.kind != "cuda":
            continue
        todo = cuda.todo_message(skel, e.symbol)
        assert todo is not None and todo.startswith("lab02:") and e.symbol in todo
        assert cuda.todo_message(sol, e.symbol) is None


def test_commented_out_todo_does_not_count():
    src = ('extern "C" __global__ void k(float* x) {\n'
           '    // LAB_TODO("lab99: k is not written yet");\n'
           '    x[0] = 1.0f;\n}\n')
    assert cuda.todo_message(src, "k") is None


def test_load_kernel_refuses_a_todo(tmp_path):
    p = tmp_path / "k.cu"
    p.write_text(SRC)
    with pytest.raises(NotImplementedError, match="lab99: second"):
        cuda.load_kernel(p, "second")


def test_load_kernel_remembers_per_file_version(tmp_path, monkeypatch):
    """Launchers call load_kernel on every launch: the source is parsed once per file version, a TODO
    keeps raising, and an edit (new mtime or size) is seen at the next call."""
    import os
    compiled = []

    class FakeModule:
        def __init__(self, source):
            self.source = source

        def get_function(self, symbol):
            compiled.append(symbol)
            return (symbol, len(self.source))

    monkeypatch.setattr(cuda, "_module", lambda source, options: FakeModule(source))
    p = tmp_path / "k.cu"
    p.write_text(SRC)
    for _ in range(3):
        with pytest.raises(NotImplementedError, match="lab99: second"):
            cuda.load_kernel(p, "second")
    first = cuda.load_kernel(p, "first")
    assert cuda.load_kernel(p, "first") is first and compiled == ["first"]
    p.write_text(SRC.replace('LAB_TODO("lab99: second is not written yet");', "x[0] = 2.0f;"))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cuda.load_kernel(p, "second")[0] == "second"
    assert cuda.load_kernel(p, "first") != first and compiled == ["first", "second", "first"]


# ---- per-GPU calibration of the speed tiers (grader/calibration) ----------------------------------------

def _report(gpu, lab, ratios, status="pass"):
    return {"labs": [{"lab": lab, "env": {"gpu": gpu}, "checks": [
        {"name": f"speed[{b}]", "status": status, "details": {"ratio": r}} for b, r in ratios.items()]}]}


def test_calibration_scales_tiers_by_the_reference_solutions_ratio(tmp_path, monkeypatch):
    from grader import calibration as C
    monkeypatch.setattr(C, "HERE", tmp_path)
    C.write(C.REFERENCE_GPU, {"lab03": {"b": 1.0, "c": 0.8}}, "t", "cmd")
    # no file for this GPU: tiers as written, and the report says so
    f, note = C.factor("NVIDIA A100-SXM4-80GB", "lab03", "b")
    assert f == 1.0 and "uncalibrated" in note
    C.write("NVIDIA A100-SXM4-80GB", C.ratios_from_report(_report("A100", "lab03", {"b": 0.7, "x": 2.0})), "t", "cmd")
    f, note = C.factor("NVIDIA A100-SXM4-80GB", "lab03", "b")
    assert f == pytest.approx(0.7) and "0.70" in note
    f, note = C.factor("NVIDIA A100-SXM4-80GB", "lab03", "c")        # not measured on the A100
    assert f == 1.0 and "no calibration" in note
    f, note = C.factor("NVIDIA A100-SXM4-80GB", "lab03", "x")        # measured here, not on the reference GPU
    assert f == 1.0 and "holds no ratio" in note
    assert C.factor(C.REFERENCE_GPU, "lab03", "b") == (1.0, "")
    # an implausible factor (a broken calibration) is ignored, loudly
    C.write("NVIDIA A100-SXM4-80GB", {"lab03": {"b": 0.05}}, "t", "cmd")
    f, note = C.factor("NVIDIA A100-SXM4-80GB", "lab03", "b")
    assert f == 1.0 and "ignored" in note


def test_calibration_takes_only_valid_speed_measurements():
    from grader import calibration as C
    # a failed check without a valid measurement (invalid timing, wrong result): no tier_scale, not taken
    assert C.ratios_from_report(_report("g", "lab02", {"a": 0.9}, status="fail")) == {}
    # below full marks on an uncalibrated card, but validly timed: taken (else a slower card could never
    # be calibrated)
    rep = _report("g", "lab02", {"a": 0.5}, status="fail")
    rep["labs"][0]["checks"][0]["details"]["tier_scale"] = 1.0
    assert C.ratios_from_report(rep) == {"lab02": {"a": 0.5}}
    r = C.ratios_from_report(_report("g", "lab02", {"a": 0.91234567}))
    assert r == {"lab02": {"a": 0.9123}}


def test_reference_gpu_calibration_covers_every_graded_benchmark():
    """The shipped H100 file holds a ratio for every benchmark that carries points, of every lab measured
    there, and each ratio clears the benchmark's full-marks edge (the solution's target)."""
    from grader import calibration as C
    from grader.labs import all_specs
    data = C.load(C.REFERENCE_GPU)
    assert data is not None
    for spec in all_specs():
        if spec.id not in data["ratios"]:
            continue
        for b in spec.benchmarks:
            if b.points == 0:
                continue
            r = data["ratios"][spec.id].get(b.name)
            assert r is not None, f"{spec.id} {b.name}: no H100 ratio"
            assert r >= max(t.min_ratio for t in b.tiers) * 0.97, f"{spec.id} {b.name}: {r} below full marks"


def test_every_shipped_calibration_names_real_benchmarks():
    """Each file under grader/calibration (H100, H200, ...) is for the GPU its name says, and holds positive
    ratios of benchmarks that exist: a renamed benchmark would otherwise silently lose its calibration."""
    from grader import calibration as C
    from grader.labs import all_specs
    names = {s.id: {b.name for b in s.benchmarks} for s in all_specs()}
    files = sorted(C.HERE.glob("*.json"))
    assert len(files) >= 2
    for f in files:
        data = json.loads(f.read_text())
        assert C.path_for(data["gpu"]) == f, f
        for lab, ratios in data["ratios"].items():
            assert lab in names, (f.name, lab)
            for bench, r in ratios.items():
                assert bench in names[lab], (f.name, lab, bench)
                assert isinstance(r, float) and r > 0, (f.name, lab, bench, r)


def test_calibrate_command_fails_cleanly_without_a_gpu_or_a_report(tmp_path):
    from tests.conftest import run_cli
    r = run_cli("calibrate", "lab02")
    assert r.returncode == 2 and "no CUDA GPU" in r.stdout + r.stderr and "Traceback" not in r.stderr
    r = run_cli("calibrate", "--from-json", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "cannot read a grade report" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_notebook_script_prints_last_expressions(tmp_path):
    """`labs notebook` turns code cells into one script; a bare last expression (even a multi-line one with
    a trailing comment) is printed as Jupyter would show it, and a cell ending in a statement prints nothing."""
    import json as _json
    import subprocess as _sp
    import sys as _sys
    from grader.notebook import to_script
    cells = [{"cell_type": "code", "source": ["x = 2\n", "(x +\n", " 40)   # a comment\n"]},
             {"cell_type": "markdown", "source": ["# title"]},
             {"cell_type": "code", "source": ["y = x * 3"]},
             {"cell_type": "code", "source": ["print('y', y)\n", "None"]}]
    nb = tmp_path / "t.ipynb"
    nb.write_text(_json.dumps({"cells": cells}))
    script = tmp_path / "t.py"
    script.write_text(to_script(nb, tmp_path, "lab00"))
    r = _sp.run([_sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["---", "cell", "0", "---", "42", "---", "cell", "1", "---",
                                "---", "cell", "2", "---", "y", "6"]


def test_secret_seed_hides_the_drawn_shapes():
    """With a non-default (secret) seed, the seed-drawn cases are named hidden-N, never by their shapes."""
    from grader.labs import get
    from grader.runner import plan
    spec = get("lab03")
    public = {f"{c.entry}[{c.name}]" for c in spec.cases}
    names0 = [p.name for p in plan(spec, "gpu", 0)]
    names = [p.name for p in plan(spec, "gpu", 987654)]
    hidden0 = [n for n in names0 if n.startswith(tuple(spec.entries)) and n.split("[", 1)[0] in spec.entries
               and n not in public and not n.endswith(("[audit]", "[implemented]"))]
    assert hidden0 and all("seeded" in n for n in hidden0)            # the public seed shows its draws
    hidden = [n for n in names if "[hidden-" in n]
    assert len(hidden) == len(hidden0)
    assert not [n for n in names if "seeded" in n]


def test_redacted_messages_lose_shapes():
    from grader.runner import CheckResult, _redacted
    def run(p, ctx):
        return CheckResult(lab="x", name="n", group="correctness", entry="e", status="fail", points=0.0,
                           max_points=1.0, message="output shape (1922, 33996), expected (1922, 33995) at 12x7; "
                                                   "max abs err 0.5")
    r = _redacted(run)(None, None)
    assert "1922" not in r.message and "33996" not in r.message and "12x7" not in r.message
    assert "max abs err 0.5" in r.message


# ---- the benchmark protocol on the CPU (its bookkeeping; GPU timing is the H100's job) ----------------

def _cpu_measure(source):
    """measure() and the re-check of timed outputs, run on the CPU tier for a small lab03 softmax (the
    student's entry under the Triton interpreter, the baseline eager): every part of the protocol but the
    CUDA events and the L2 flush."""
    from grader.labs import get
    from grader.labs.lab03_fused_rowwise import rowwise
    from grader.runner import Context, measure, resolve_files
    from grader.spec import Benchmark, SpeedTier

    spec = get("lab03")
    bench = Benchmark("cpu-softmax-fp32-8x64", "softmax", rowwise("softmax", (8, 64), "fp32"), "eager",
                      (SpeedTier(0.0, 1.0),))
    ctx = Context(spec, resolve_files(spec, source), "cpu", 0)
    try:
        m = measure(ctx, bench, rounds=2, reps=4)
        return m, m.get("error")
    finally:
        ctx.close()


def _cpu_measure_lab02(source):
    """measure() for a small lab02 GEMM on the CPU tier (no LabSpec.perturb: three fixed input sets)."""
    from grader.labs import get
    from grader.labs.lab02_tiled_matmul import mnk
    from grader.runner import Context, measure, resolve_files
    from grader.spec import Benchmark, SpeedTier

    spec = get("lab02")
    bench = Benchmark("cpu-triton-fp32-32", "triton_matmul", mnk(32, 32, 32, "fp32"), "cublas", (SpeedTier(0.0, 1.0),))
    ctx = Context(spec, resolve_files(spec, source), "cpu", 0)
    try:
        m = measure(ctx, bench, rounds=2, reps=4)
        return m, m.get("error")
    finally:
        ctx.close()


def test_salted_inputs_are_reproduced_for_every_recheck(monkeypatch):
    # With the salt on, each timed call's inputs get one element per row rewritten just before the call;
    # the grading process rebuilds them for the re-check: an honest submission must pass every re-check,
    # with LabSpec.perturb (lab03) and without (lab02)
    import grader.runner
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", True)
    for measure_it in (_cpu_measure, _cpu_measure_lab02):
        m, wrong = measure_it("solutions")
        assert wrong is None, wrong
        assert len(m["rep_seeds"]) == m["reps_done"] == 8 and len(m["rechecked"]) == 2


def _small_salted_case(spec, entry):
    """The smallest CPU-tier case of `entry` whose salted input has rows of >= 8 elements."""
    from grader.inputs import make, salted_input
    best = None
    for c in spec.all_cases(0):
        if "cpu" not in c.tiers or c.entry != entry:
            continue
        inputs = make(spec, c.params, 0, "cpu")
        name = salted_input(spec, inputs)
        if name and inputs[name].shape[-1] >= 8:
            size = sum(t.numel() for t in inputs.values() if isinstance(t, torch.Tensor))
            if best is None or size < best[0]:
                best = (size, c.params, name)
    return best


@pytest.mark.parametrize("lab", ["lab01", "lab04", "lab06", "lab10"])
def test_every_salted_lab_passes_its_salted_rechecks_on_the_cpu(monkeypatch, lab):
    # The salt is on by default: for each lab that names one (lab02 and lab03 above), the solution's timed
    # outputs must pass their re-checks with it, and the salt must move the reference (else it catches
    # nothing). The smallest CPU case of the lab's first benchmark entry, measured as a speed check is.
    import grader.runner
    from grader.inputs import apply_salt, make, salt_plan
    from grader.labs import get
    from grader.runner import Context, measure, resolve_files
    from grader.spec import Benchmark, SpeedTier
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", True)
    spec = get(lab)
    bench = next(b for b in spec.benchmarks if _small_salted_case(spec, b.entry))
    _, params, name = _small_salted_case(spec, bench.entry)
    inputs = make(spec, params, 3, "cpu")
    ref = spec.reference(inputs, params)
    apply_salt(inputs[name], salt_plan(inputs[name], 3, spec.salt_scale), 7)
    salted = spec.reference(inputs, params)
    moved = [not torch.equal(a, b) for a, b in zip(ref if isinstance(ref, tuple) else (ref,),
                                                   salted if isinstance(salted, tuple) else (salted,))]
    assert any(moved), f"{lab}: the salt on {name} does not change the reference"
    b = Benchmark("cpu-" + bench.name, bench.entry, params, bench.baseline, (SpeedTier(0.0, 1.0),))
    ctx = Context(spec, resolve_files(spec, "solutions"), "cpu", 0)
    try:
        m = measure(ctx, b, rounds=2, reps=3)
    finally:
        ctx.close()
    assert "error" not in m, m.get("error")
    assert len(m["rechecked"]) == 2 and len(m["rep_seeds"]) == 6


def test_salt_catches_answers_computed_from_stale_inputs(monkeypatch, tmp_path):
    # An answer computed before the salt lands is stale: here a replay per live input tensor (on a GPU the
    # same happens to work started on a side stream before the timing stream reaches the call). Without the
    # salt the three fixed input sets make every replay right; with it the re-check fails.
    import shutil

    import grader.runner
    src = REPO_ROOT / "solutions" / "stage1_foundations" / "lab02_tiled_matmul"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / "triton_matmul.py", "a") as f:
        f.write("\n\n_seen = {}\n_compute = matmul\n\n\ndef matmul(a, b):\n"
                "    key = (a.data_ptr(), b.data_ptr())\n"
                "    if key not in _seen:\n        _seen[key] = _compute(a, b)\n"
                "    return _seen[key].clone()\n")
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", False)
    m, wrong = _cpu_measure_lab02(tmp_path)
    assert wrong is None, wrong                                   # unsalted: the replays pass
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", True)
    m, wrong = _cpu_measure_lab02(tmp_path)
    assert wrong and "returned a wrong result" in wrong, wrong


def test_salt_also_catches_batch_then_skip(monkeypatch):
    # The batch's answers computed in its first call cannot include the later calls' salt (written just
    # before each of them): the re-check finds them stale. (An exploit that also replays the salt from its
    # worker's state is the residual README.md lists.)
    import grader.runner
    from tests.conftest import exploit_dir
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", True)
    m, wrong = _cpu_measure(exploit_dir("lab03", "batch_then_skip"))
    assert wrong and "returned a wrong result" in wrong, wrong


def test_salt_plan_rewrites_one_element_per_row_and_depends_only_on_its_seeds():
    from grader.inputs import apply_salt, salt_plan
    for shape in [(3072,), (5, 9), (2, 3, 4, 6)]:
        t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        plan, again = salt_plan(t, 5), salt_plan(t.clone(), 5)
        assert torch.equal(plan[0], again[0]) and torch.equal(plan[1], again[1])
        u, v = t.clone(), t.clone()
        apply_salt(u, plan, 11)
        apply_salt(v, plan, 12)
        apply_salt(v, plan, 11)                                   # history does not matter, only this call
        assert torch.equal(u, v) and not torch.equal(u, t)
        changed = (u != t).reshape(-1, t.shape[-1] if t.dim() > 1 else 1024)
        assert (changed.sum(1) == 1).all()                        # one per row (1-D: per 1024 elements)
        big = (u[u != t].abs() >= 4 * t.square().mean().sqrt() * 0.99).all()
        assert big                                                # far outside the data: answers move


def test_measure_runs_on_the_cpu_and_rechecks_timed_outputs():
    m, wrong = _cpu_measure("solutions")
    assert wrong is None, wrong
    assert m["reps_done"] == 8 and len(m["student"]) == len(m["base"]) == 8
    # one output of every batch re-checked, a call of that batch
    assert len(m["rechecked"]) == 2 and m["rechecked"][0] in range(4) and m["rechecked"][1] in range(4, 8)
    assert all(t > 0 for t in m["student"] + m["base"])
    assert len(m["batch_wall_left_ms"]) == len(m["batch_reported_ms"]) == len(m["base_gap_ms"]) == 2
    # the host clock around each batch covers the calls it reports (no flush or archive on the CPU)
    assert m["wall_per_call_ms"] >= 0.5 * m["reported_per_call_ms"], m
    # the harness alone (null batches, no call) was timed in both processes and subtracted
    assert set(m["null_per_call_ms"]) == {"student", "base"} and all(v > 0 for v in m["null_per_call_ms"].values())


def test_the_wall_bound_separates_a_patched_timer_from_honest_calls():
    """The H200's medians (2026-11-29, BENCHMARKS.md "The H200, session 9"): reported vs wall left per call
    after the null batch, and the baseline's own gap."""
    from grader.runner import _wall_disagrees

    def m(rep, wall, gap, host_bound=False):
        return {"reported_per_call_ms": rep, "wall_per_call_ms": wall, "base_gap_ms": [gap] * 6, "host_bound": host_bound}
    honest = {"lab10 decode M1 4096": m(0.0184, 0.0466, 0.0102), "lab10 decode M1 14336": m(0.0225, 0.0472, 0.0094),
              "lab10 prefill M4096": m(2.0438, 2.0953, 0.0489), "lab01 copy 32Mi+3": m(0.0765, 0.0945, 0.0334),
              "lab01 fused_step": m(0.0966, 0.1494, 0.0392, host_bound=True), "lab02 bf16 4096": m(0.1907, 0.2063, 0.0670),
              "lab03 softmax 8192 eager": m(0.0387, 0.0562, 0.0303)}
    for name, x in honest.items():
        assert not _wall_disagrees(x), name
    # lab02/patches_timer: 2x the work, 55% of it reported
    assert _wall_disagrees(m(0.2045, 0.3817, 0.0550))
    # the solution's own kernel under a 55% timer: its wall as measured, 55% of its time reported. cuBLAS's
    # 67 us gap counts only up to 30 us: the whole of it would hide this
    assert _wall_disagrees(m(0.55 * 0.1907, 0.2063, 0.0670))
    # host-bound (lab01's fused step, second run: its host slower than the baseline's): the looser rule
    assert not _wall_disagrees(m(0.2055, 0.3249, 0.0151, host_bound=True))
    assert _wall_disagrees(m(0.2055, 0.3249, 0.0151))
    assert _wall_disagrees(m(0.1, 0.3249, 0.0151, host_bound=True))


def test_replay_per_live_input_gains_nothing_in_timed_calls():
    # lab03 gives every timed call fresh tensors with fresh values (spec.perturb): a cache keyed on the live
    # input never hits, so the exploit computes every timed answer (right, and as slow as computing it).
    # Before spec.perturb its timed calls were replays: 1.9 ms against the solution's 9.7 ms here.
    from tests.conftest import exploit_dir
    m, wrong = _cpu_measure(exploit_dir("lab03", "replays_timed_inputs"))
    assert m["rep_seeds"] and len(set(m["rep_seeds"])) == m["reps_done"]
    assert wrong is None, wrong
    sol, _ = _cpu_measure("solutions")
    exploit_ms, solution_ms = statistics.median(m["student"]), statistics.median(sol["student"])
    assert exploit_ms >= 0.5 * solution_ms, (exploit_ms, solution_ms)


def test_batch_then_skip_is_scored_on_batch_means(monkeypatch):
    # The first timed call of each batch computes every answer of the batch (the exploit reads the batch's
    # seeds from its own process), the others hand them out: every timed answer is right and the median
    # call is a clone. Scored on batch means, it is as slow as its kernel. (Unsalted: with the salt, below.)
    import grader.runner
    from grader.runner import scored_times
    from tests.conftest import exploit_dir
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", False)
    m, wrong = _cpu_measure(exploit_dir("lab03", "batch_then_skip"))
    assert wrong is None, wrong
    first, rest = m["student"][0::4], [t for i, t in enumerate(m["student"]) if i % 4]
    assert min(first) > 3 * max(rest), m["student"]          # the exploit did run as described
    sol, _ = _cpu_measure("solutions")
    stu_ms, base_ms, note = scored_times(m)
    assert "batch means" in note
    sol_ms, sol_base_ms, sol_note = scored_times(sol)
    assert sol_note == "", sol_note                            # an honest submission keeps its median
    # (the two timings are compared directly: the tiny eager baseline's CPU batch means are host noise)
    assert stu_ms >= 2 * sol_ms, (stu_ms, sol_ms)


def test_scored_times_ignores_host_delays_but_not_uneven_batches():
    from grader.runner import scored_times
    # three batches of 4 calls; one call in one batch ran 5x slow (a disturbed batch): the median stands
    even = {"student": [1.0] * 4 + [5.0] + [1.0] * 7, "base": [2.0] * 12,
            "batch_reported_ms": [1.0, 2.0, 1.0], "base_batch_reported_ms": [2.0] * 3}
    assert scored_times(even) == (1.0, 2.0, "")
    # every batch: one call did the work of four, three handed out answers
    skewed = dict(even, student=[4.0, 0.1, 0.1, 0.1] * 3, batch_reported_ms=[1.075] * 3)
    stu, base, note = scored_times(skewed)
    assert (stu, base) == (1.075, 2.0) and "some calls did others' work" in note
    # host delays in most batches of a 13 us kernel (lab 10 decode on the H100): +8-26 us per batch mean,
    # under the absolute margin, so the median call stands
    delayed = {"student": [0.013] * 60, "base": [0.021] * 60,
               "batch_reported_ms": [0.053, 0.016, 0.026, 0.022, 0.019, 0.013], "base_batch_reported_ms": [0.021] * 6}
    assert scored_times(delayed) == (0.013, 0.021, "")


def test_a_disturbed_measurement_is_one_that_is_repeated():
    from grader.runner import disturbed
    clean = {"student": [0.013] * 60, "base": [0.021] * 60, "batch_reported_ms": [0.014] * 6,
             "base_batch_reported_ms": [0.021] * 6, "wall_per_call_ms": 0.02, "reported_per_call_ms": 0.014,
             "base_gap_ms": [0.0] * 6}
    assert not disturbed(clean)
    # the student's batches uneven past the margin (what batch_then_skip does in every run)
    assert disturbed(dict(clean, batch_reported_ms=[0.3] * 6))
    # the baseline's batches uneven: the GPU or host was busy with something else (H100, 2026-11-28:
    # one lab 10 benchmark's baseline at 41 us against its usual 22 us, the student's calls 2-50x slow)
    assert disturbed(dict(clean, base_batch_reported_ms=[0.021, 0.2, 0.3, 0.021, 0.25, 0.4]))
    # the wall clock leaves far more per call than the events report
    assert disturbed(dict(clean, wall_per_call_ms=0.5))


def test_a_disturbed_speed_measurement_is_repeated_once_and_the_repeat_stands(monkeypatch):
    # The speed check's own logic, without a GPU: measure() replaced by two canned measurements.
    import types
    import grader.runner as R
    spec = get("lab10")
    bench = next(b for b in spec.benchmarks if b.name == "decode-bf16-M1-4096x4096")
    base = {"base": [0.021] * 60, "base_batch_reported_ms": [0.021] * 6, "base_gap_ms": [0.0] * 6,
            "wall_per_call_ms": 0.02, "reported_per_call_ms": 0.014}
    clean = dict(base, student=[0.0125] * 60, batch_reported_ms=[0.0125] * 6, batch_wall_left_ms=[0.0125] * 6)
    # the H100 case of 2026-11-28: the student's calls 2-50x slow for a few batches, the baseline's too
    noisy = dict(clean, student=[0.175] * 60, batch_reported_ms=[0.05, 1.04, 0.46, 0.10, 0.75, 0.22],
                 base_batch_reported_ms=[0.021, 0.2, 0.3, 0.021, 0.25, 0.4])
    calls = []

    def fake_measure(ctx, b):
        calls.append(b.name)
        return [noisy, clean][len(calls) - 1] if len(calls) <= 2 else clean
    monkeypatch.setattr(R, "measure", fake_measure)
    ctx = types.SimpleNamespace(spec=spec, tier="gpu", audit_failed={}, entry_missing=lambda e: set(),
                                env=types.SimpleNamespace(gpu="NVIDIA H100 80GB HBM3"),
                                worker=types.SimpleNamespace(request=lambda *a, **k: {"status": "ok"}))
    p = R.Planned(f"speed[{bench.name}]", "speed", bench.entry, bench.points, None)
    r = R._speed_check(bench)(p, ctx)
    assert len(calls) == 2, calls                                   # measured once more, not merged
    assert "measured twice" in r.message and "batch means" not in r.message, r.message
    assert abs(r.details["ratio"] - 0.021 / 0.0125) < 1e-9, r.message
    first = r.details["first_run"]                                  # the disturbed run, reported, not scored
    assert first["why"] == ["student uneven", "baseline uneven"] and first["batch_reported_ms"][1] == 1.04
    # a cheat is disturbed every time: the repeat's verdict stands (scored on batch means)
    calls.clear()
    monkeypatch.setattr(R, "measure", lambda ctx, b: calls.append(1) or dict(noisy, base_batch_reported_ms=[0.021] * 6))
    r = R._speed_check(bench)(p, ctx)
    assert len(calls) == 2 and "batch means" in r.message and r.points < bench.points, r.message


def test_host_bound_benchmarks_record_the_hosts_speed(monkeypatch):
    """lab01's fused step and lab05's decode loop time mostly host work: their ratios moved 3.5x-7.4x and
    8.1x-9.0x between grades on the H200 while the host's speed (a fixed Python loop) moved 2x. The report
    records that speed next to the ratio and says the benchmark is host-bound; other benchmarks do not pay
    for the probe."""
    import types
    import grader.runner as R
    assert 0 < hardware.host_loop_ms(n=20_000, repeats=2) < 1e4
    assert hardware.environment("cpu", 0).host_loop_ms > 0
    marked = {(s.id, b.name) for s in (get(lab) for lab in ("lab01", "lab02", "lab03", "lab04", "lab05", "lab06", "lab10"))
              for b in s.benchmarks if b.host_bound}
    assert marked == {("lab01", "fused_step-fp32-64x256x4"), ("lab05", "decode-bf16-b16-t4096-n32")}, marked
    m = {"base": [0.5] * 60, "base_batch_reported_ms": [0.5] * 6, "base_gap_ms": [0.0] * 6, "student": [0.1] * 60,
         "batch_reported_ms": [0.1] * 6, "batch_wall_left_ms": [0.1] * 6, "wall_per_call_ms": 0.1,
         "reported_per_call_ms": 0.1}
    monkeypatch.setattr(R, "measure", lambda ctx, b: dict(m))
    probes = []
    monkeypatch.setattr(R.hardware, "host_loop_ms", lambda: probes.append(1) or 42.0)
    for lab, name, host_bound in (("lab01", "fused_step-fp32-64x256x4", True), ("lab01", "copy_vectorized-fp32-64Mi", False)):
        spec = get(lab)
        bench = next(b for b in spec.benchmarks if b.name == name)
        ctx = types.SimpleNamespace(spec=spec, tier="gpu", audit_failed={}, entry_missing=lambda e: set(),
                                    env=types.SimpleNamespace(gpu="NVIDIA H100 80GB HBM3", host_loop_ms=30.0),
                                    worker=types.SimpleNamespace(request=lambda *a, **k: {"status": "ok"}))
        probes.clear()
        r = R._speed_check(bench)(R.Planned(f"speed[{name}]", "speed", bench.entry, bench.points, None), ctx)
        assert abs(r.details["ratio"] - 5.0) < 1e-9, r.message
        if host_bound:
            assert probes == [1] and r.details["host_loop_ms"] == 42.0, r.details
            assert "host-bound" in r.message and "42.0 ms, 30.0 ms at the grade's start" in r.message, r.message
        else:
            assert not probes and "host_loop_ms" not in r.details and "host-bound" not in r.message, r.message


def test_timed_calls_that_skip_the_work_are_caught():
    # Right in every correctness trial, an empty tensor in every timed call: the re-check of one timed
    # output per batch (chosen after the batch ran) finds it.
    from tests.conftest import exploit_dir
    m, wrong = _cpu_measure(exploit_dir("lab03", "wrong_when_timed"))
    assert wrong and "returned a wrong result" in wrong and "Every timed call is checked" in wrong, wrong


# ---- the known-bad submissions' storage (tests/exploits.py) -------------------------------------------

def test_exploit_patches_follow_the_solution_and_fail_loudly():
    from tests.exploits import PatchError, apply_patch, make_patch
    sol = "".join(f"line {i}\n" for i in range(40))
    bad = sol.replace("line 20\n", "line 20  # BUG\n")
    patch = make_patch(sol, bad, "f.py")
    assert apply_patch(sol, patch) == bad
    grown = "# a new header\n" * 5 + sol                        # the solution grew above the hunk
    assert apply_patch(grown, patch) == grown.replace("line 20\n", "line 20  # BUG\n")
    with pytest.raises(PatchError, match="hunk 1 .* no longer matches"):
        apply_patch(sol.replace("line 19\n", "line nineteen\n"), patch)


def test_every_exploit_builds_from_todays_solution():
    from tests import exploits
    for lab, name in exploits.all_exploits():
        d = exploits.build(lab, name)
        assert (d / "README.md").is_file(), (lab, name)
        files = [f for f in d.iterdir() if f.name != "README.md"]
        assert files, (lab, name)
        for f in files:
            assert "KNOWN-BAD SUBMISSION" in f.read_text()[:400] or f.suffix == ".cu", (lab, name, f.name)


def test_a_timed_call_that_leaves_persisting_l2_fails_the_timing():
    # The worker reads the persisting-L2 set-aside back at the end of every timed batch (CUDA only); here a fake
    # worker reports one, and the grading process must reject the timing with the reason.
    from types import SimpleNamespace

    from grader.labs import get
    from grader.runner import measure
    from grader.spec import Benchmark, SpeedTier
    from grader.labs.lab03_fused_rowwise import rowwise

    class FakeWorker:
        def request(self, msg, timeout, what):
            if msg["cmd"] == "bench_run":
                return {"status": "ok", "times_ms": [0.1] * msg["reps"], "bad_output": None,
                        "persisting_l2_bytes": 48 << 20}
            return {"status": "ok"}

    fake = FakeWorker()
    ctx = SimpleNamespace(spec=get("lab03"), seed=0, device="cpu", worker=fake, baseline_worker=lambda: fake)
    bench = Benchmark("cpu-softmax-fp32-8x64", "softmax", rowwise("softmax", (8, 64), "fp32"), "eager",
                      (SpeedTier(0.0, 1.0),))
    m = measure(ctx, bench, rounds=2, reps=4)
    assert "error" in m and "50331648 bytes of L2 set aside" in m["error"], m
