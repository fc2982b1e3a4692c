"""The student's process: loads the student's files, runs their entry points, reports raw results.

Nothing here decides pass or fail. Inputs are rebuilt from a seed; outputs, inputs-after-the-call and
per-call times go back to the grading process (grader.runner), which holds the references and the
wall clock. Patching anything in this process changes only what this process reports, and every
report is checked against something computed elsewhere.
"""

from __future__ import annotations

import os
import time
import sys
import traceback

BASELINE = "baseline:"
CU_LIMIT_PERSISTING_L2_CACHE_SIZE = 0x06


class _PersistingL2:
    """The persisting-L2 set-aside (GRADING_THREATS.md row 14), through the CUDA driver API. With a set-aside
    and an access-policy window on its stream, a submission can keep its inputs in L2 through the grader's
    flush. Each timed batch starts with no set-aside and no persisting lines; at the batch's end the set-aside
    is read back: a batch whose calls left one in place is reported, and the grading process rejects the
    timing. Read once per batch, not after every call: on the H100 host a cuCtxGetLimit between calls made
    the next calls' launches slow (lab 10 decode, host time per call p90 139 -> 508 us; GPU idle inside the
    events, uneven calls; tools/gpu_checks/timing_probe.py). Where the driver lacks the calls, a no-op."""

    def __init__(self):
        import ctypes
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
            self.lib.cuCtxGetLimit.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
            self.lib.cuCtxSetLimit.argtypes = [ctypes.c_int, ctypes.c_size_t]
            self.lib.cuCtxResetPersistingL2Cache.argtypes = []
            self.value = ctypes.c_size_t(0)
            self.ok = self.set_aside() is not None
        except OSError:
            self.ok = False

    def set_aside(self) -> int | None:
        import ctypes
        if self.lib.cuCtxGetLimit(ctypes.byref(self.value), CU_LIMIT_PERSISTING_L2_CACHE_SIZE) != 0:
            return None
        return int(self.value.value)

    def reset(self):
        if self.ok:
            self.lib.cuCtxSetLimit(CU_LIMIT_PERSISTING_L2_CACHE_SIZE, 0)
            self.lib.cuCtxResetPersistingL2Cache()


def _describe(exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in tb[-4:]]
    return {"status": "error", "type": type(exc).__name__, "message": str(exc)[:4000], "where": frames}


class _Session:
    def __init__(self, lab_id: str, files: dict[str, str], device: str):
        import torch

        from .labs import get

        self.torch = torch
        self.spec = get(lab_id)
        self.files = files
        self.device = device
        self.fns: dict[str, object] = {}
        self.bench = None
        self.flush_buf = None
        self.hold_cycles = 0
        self.l2 = None

    def entry(self, name: str):
        if name not in self.fns:
            from pathlib import Path
            if name.startswith(BASELINE):      # the baseline, timed by this same harness in its own process
                self.fns[name] = self.spec.baselines[name[len(BASELINE):]]
            else:
                self.fns[name] = self.spec.load_entry(name, {k: Path(v) for k, v in self.files.items()})
        return self.fns[name]

    def inputs(self, params: dict, seed: int):
        from .inputs import make

        return make(self.spec, params, seed, self.device)

    def call(self, name: str, inputs: dict, params: dict):
        if name.startswith(BASELINE):
            return self.entry(name)(inputs, params)
        return self.spec.call(self.entry(name), inputs, params)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    # ---- commands -------------------------------------------------------------------------------

    def do_load(self, msg):
        self.entry(msg["entry"])
        return {"status": "ok"}

    def do_check(self, msg):
        torch = self.torch
        params, seed = msg["params"], msg["seed"]
        self.entry(msg["entry"])          # import first: the import's own allocations must not take the poison
        inputs = self.inputs(params, seed)
        # Every torch.empty/empty_like in the call comes back NaN-filled (threat: recycled buffers that
        # happen to hold the answer, or zeros that hide an unwritten tile). Correctness calls only: it
        # costs a memset per allocation, which must not be billed to timed calls.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        try:
            out = self.call(msg["entry"], inputs, params)
            self.sync()
        finally:
            torch.use_deterministic_algorithms(False)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        kinds = [type(o).__name__ if type(o) is not self.torch.Tensor else "Tensor" for o in outs]
        plain = [o if type(o) is self.torch.Tensor else None for o in outs]
        plain = [o if o is None or o.layout == self.torch.strided else None for o in plain]
        return {"status": "ok", "outputs": plain, "kinds": kinds,
                "inputs_after": inputs}

    def do_audit(self, msg):
        from torch.profiler import ProfilerActivity, profile

        params, seed = msg["params"], msg["seed"]
        inputs = self.inputs(params, seed)
        self.call(msg["entry"], inputs, params)      # compile / autotune outside the profiled call
        self.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with profile(activities=acts) as prof, _recording_triton_launches() as launched:
            self.call(msg["entry"], inputs, params)
            self.sync()
        ops, kernels = set(), set()
        for ev in prof.events():
            dev = str(getattr(ev, "device_type", "")).lower()
            (kernels if "cuda" in dev else ops).add(ev.name)
        return {"status": "ok", "ops": sorted(ops), "kernels": sorted(kernels), "triton_launches": sorted(launched)}

    def do_bench_setup(self, msg):
        torch = self.torch
        from .spec import DTYPES
        params = msg["params"]
        self.bench = {"entry": msg["entry"], "params": params,
                      "sets": [self.inputs(params, s) for s in msg["seeds"]]}
        # Timed outputs are copied here after each call (outside the timed region) and the student's
        # tensor is released, so every call allocates from a warm allocator, as the baseline does.
        # The archive holds one batch (slot = rep % archive_reps); the grading process fetches from it
        # between batches.
        self.bench["archive"] = [] if msg["entry"].startswith(BASELINE) else [
            torch.empty((msg["archive_reps"],) + tuple(shape), dtype=DTYPES[dt], device=self.device)
            for shape, dt, *_ in self.spec.outputs(params)]
        # A null batch (runner.measure) runs the same loop without the call; its archive copies go from
        # and to these, so that the student's archived outputs stay as they were
        self.bench["null"] = [(torch.zeros_like(slot[0]), torch.empty_like(slot[0])) for slot in self.bench["archive"]]
        # Salt (runner.SALT_TIMED_INPUTS): where and what to rewrite in each set before each timed call
        self.bench["salt"] = None
        if msg.get("salt"):
            from .inputs import salt_plan, salted_input
            name = salted_input(self.spec, self.bench["sets"][0])
            if name:
                self.bench["salt"] = (name, [salt_plan(st[name], seed, self.spec.salt_scale)
                                             for st, seed in zip(self.bench["sets"], msg["seeds"])])
        self.hold_cycles = int(msg.get("hold_cycles", 0))
        if self.flush_buf is None and msg["flush_bytes"]:
            self.flush_buf = torch.empty(msg["flush_bytes"] // 4, dtype=torch.int32, device=self.device)
        # At least `warmup` calls and `warmup_s` seconds of them: an idle GPU sits at a low clock and
        # takes tens of milliseconds of work to ramp up; a few calls of a 30 us kernel do not get it there.
        t_end = time.perf_counter() + float(msg.get("warmup_s", 0.0))
        i = 0
        while i < msg["warmup"] or (time.perf_counter() < t_end and i < 10_000):
            self.call(msg["entry"], self.bench["sets"][i % len(self.bench["sets"])], params)
            i += 1
            if i % 8 == 0:
                self.sync()
        self.sync()
        return {"status": "ok"}

    def do_bench_run(self, msg):
        """Back to back, as triton.testing.do_bench: per call flush L2, a GPU spin (the host's own work
        for the call then runs ahead of the GPU), start event, call, end event; one device-wide sync per
        batch. Work hidden on side streams or a patched timer shows up against
        the batch's wall time, which the grading process measures on its own clock (runner.measure).
        `null`: the same loop with no call (the archive copy from a buffer of the output's size): its wall
        time is everything in a batch that is not the call's."""
        from .inputs import apply_salt, salt_values
        torch = self.torch
        b = self.bench
        bad = None
        events = []
        cuda = self.device == "cuda"     # on the CPU (the protocol's own tests) the host clock times each call
        null = bool(msg.get("null"))
        self.sync()
        persisting = 0
        if cuda:
            if self.l2 is None:
                self.l2 = _PersistingL2()
            self.l2.reset()
        rep_seeds = msg.get("rep_seeds") or []
        salt = []                         # this batch's salt values per call, made before the timed loop
        if b["salt"] and rep_seeds:
            name, plans = b["salt"]
            for j, i in enumerate(range(msg["start"], msg["start"] + msg["reps"])):
                plan = plans[i % len(plans)]
                salt.append((name, plan, salt_values(b["sets"][i % len(b["sets"])][name], plan, rep_seeds[j])))
        for j, i in enumerate(range(msg["start"], msg["start"] + msg["reps"])):
            inputs = b["sets"][i % len(b["sets"])]
            if rep_seeds and self.spec.perturb:   # fresh values for this call, before the flush
                inputs = self.spec.perturb(inputs, b["params"], torch.Generator().manual_seed(rep_seeds[j]))
            if self.flush_buf is not None:
                self.flush_buf.zero_()
            if cuda and self.hold_cycles:     # keeps the GPU busy while the host prepares the call
                torch.cuda._sleep(self.hold_cycles)
            if salt:                          # last before the start event: side-stream work that does not
                name, plan, values = salt[j]  # wait for this stream reads the previous call's values
                apply_salt(inputs[name], plan, rep_seeds[j], values)
            if null:
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    end.record()
                for src, dst in b["null"]:
                    dst.copy_(src)
                del inputs
                continue
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self.call(b["entry"], inputs, b["params"])
                end.record()
            else:
                start = time.perf_counter()
                out = self.call(b["entry"], inputs, b["params"])
                end = time.perf_counter()
            events.append((start, end))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if not b["archive"]:        # a baseline: nothing to re-check
                outs = ()
            elif len(outs) != len(b["archive"]):
                bad = bad or f"timed call #{i} returned {len(outs)} outputs"
            for slot, o in zip(b["archive"], outs):   # stream-ordered after `end`: not timed
                if type(o) is torch.Tensor and o.shape == slot.shape[1:] and o.dtype == slot.dtype:
                    slot[i % slot.shape[0]].copy_(o)
                else:
                    bad = bad or f"timed call #{i} returned {type(o).__name__} {tuple(getattr(o, 'shape', ()))}"
            del out, outs, inputs
        self.sync()
        if null:
            return {"status": "ok", "times_ms": [], "bad_output": None, "persisting_l2_bytes": 0}
        times = [s.elapsed_time(e) if cuda else (e - s) * 1e3 for s, e in events]
        if cuda and self.l2.ok:
            persisting = self.l2.set_aside() or 0
            if persisting:
                self.l2.reset()
        return {"status": "ok", "times_ms": times, "bad_output": bad, "persisting_l2_bytes": persisting}

    def do_bench_fetch(self, msg):
        return {"status": "ok", "outputs": [slot[msg["rep"]] for slot in self.bench["archive"]]}

    def do_bench_clear(self, msg):
        self.bench = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
        return {"status": "ok"}

    def do_ping(self, msg):
        return {"status": "ok"}


class _recording_triton_launches:
    """The names of the Triton kernels launched inside the block, compiled (JITFunction) or under the
    interpreter (InterpretedFunction, the CPU tier, where the profiler sees no kernel at all)."""

    def __enter__(self) -> set:
        self.names: set = set()
        self.patched = []
        try:
            from triton.runtime.jit import JITFunction
            classes = [JITFunction]
            try:
                from triton.runtime.interpreter import InterpretedFunction
                classes.append(InterpretedFunction)
            except ImportError:
                pass
        except ImportError:              # no Triton: nothing can be launched
            return self.names
        names = self.names
        for cls in classes:
            orig = cls.__dict__.get("run")
            if orig is None:
                continue

            def run(fn_self, *args, _orig=orig, **kwargs):
                names.add(getattr(getattr(fn_self, "fn", None), "__name__", "?"))
                return _orig(fn_self, *args, **kwargs)
            cls.run = run
            self.patched.append((cls, orig))
        return names

    def __exit__(self, *exc):
        for cls, orig in self.patched:
            cls.run = orig
        return False


def _block_ops(spec) -> object:
    """Replace the CPU/CUDA kernels of the lab's blocked aten ops with an error, before student code loads."""
    import warnings

    import torch

    lib = torch.library.Library("aten", "IMPL")

    def blocked(op):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{spec.id}: aten::{op} is not allowed in this lab (it is what the lab asks you "
                               "to write); compute the result with your own kernel")
        return fail

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "overriding a previously registered kernel" is the point
        for op in spec.blocked_ops:
            for key in ("CPU", "CUDA"):
                try:
                    lib.impl(op, blocked(op), key)
                except RuntimeError:
                    pass                     # an op this torch version lacks
    return lib


def main(conn, lab_id: str, files: dict[str, str], device: str, interpret: bool, role: str = "student") -> None:
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    from . import protocol

    # The student's prints go to our stderr so they can never corrupt the message stream.
    sys.stdout = sys.stderr
    try:
        session = _Session(lab_id, files, device)
        if role == "student":
            session.blocked_ops_lib = _block_ops(session.spec)   # kept alive: the overrides live with it
    except BaseException as exc:  # noqa: BLE001 - reported to the grading process
        protocol.send(conn, _describe(exc))
        return
    protocol.send(conn, {"status": "ready"})
    while True:
        try:
            msg = protocol.recv(conn)
        except (EOFError, OSError):
            return
        cmd = msg.get("cmd")
        if cmd == "exit":
            return
        try:
            reply = getattr(session, f"do_{cmd}")(msg)
        except BaseException as exc:  # noqa: BLE001 - a student error is data, not a crash
            reply = _describe(exc)
        try:
            protocol.send(conn, reply)
        except BaseException as exc:  # noqa: BLE001
            protocol.send(conn, _describe(exc))
