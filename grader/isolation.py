"""A student's process on a leash: spawned, time-limited, restarted after a crash or hang."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

from . import protocol, worker

STARTUP_TIMEOUT_S = 300.0


class StudentFailure(Exception):
    """The student's process hung, crashed or broke the protocol; the message says which."""


class WorkerHandle:
    live_pids: set[int] = set()          # every worker process of this grading process, student or baseline

    def __init__(self, lab_id: str, files: dict[str, str], device: str, interpret: bool, role: str = "student"):
        self.lab_id, self.files, self.device, self.interpret, self.role = lab_id, files, device, interpret, role
        self.proc = None
        self.conn = None
        self.restarts = 0

    def _start(self):
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        # worker.main sets TRITON_INTERPRET itself before anything imports triton.
        self.proc = ctx.Process(target=worker.main, daemon=True, name=f"student-{self.lab_id}",
                                args=(child, self.lab_id, self.files, self.device, self.interpret, self.role))
        with CHILDREN_LOCK:         # no stray-hunting while a legitimate child is being started
            _become_subreaper()
            self.proc.start()
            WorkerHandle.live_pids.add(self.proc.pid)
            self.children_before = _children(os.getpid())
        child.close()
        self.conn = parent
        reply = self._receive(STARTUP_TIMEOUT_S, "starting")
        if reply.get("status") != "ready":
            self.close()
            raise StudentFailure(f"the student process failed to start: {reply.get('type')}: {reply.get('message')}")

    def _receive(self, timeout: float, what: str) -> dict:
        if not self.conn.poll(timeout):
            self.kill()
            raise StudentFailure(f"timed out after {timeout:.0f}s while {what} (an infinite loop, a deadlock "
                                 "between blocks, or a grid far too large); the process was killed")
        try:
            reply = protocol.recv(self.conn)
        except (EOFError, OSError, ConnectionError):
            code = None
            if self.proc is not None:
                self.proc.join(5)      # reap it first: exitcode is None until then
                code = self.proc.exitcode
            self.kill()
            raise StudentFailure(f"the student process died while {what} (exit code {code}"
                                 f"{_signal_name(code)}): a segfault, an abort in native code, or os._exit")
        except Exception as exc:  # malformed message: treat as a crash, never trust it
            self.kill()
            raise StudentFailure(f"the student process sent a malformed message while {what}: {exc}")
        if not isinstance(reply, dict):
            self.kill()
            raise StudentFailure(f"the student process sent a malformed message while {what}")
        return reply

    def request(self, msg: dict, timeout: float, what: str) -> dict:
        if self.proc is None or not self.proc.is_alive():
            if self.proc is not None:
                self.restarts += 1
            self._start()
        try:
            protocol.send(self.conn, msg)
        except (OSError, ValueError):
            self.kill()
            raise StudentFailure(f"the student process is gone (exit code {self.proc and self.proc.exitcode})")
        reply = self._receive(timeout, what)
        if reply.get("status") == "error" and _poisons_context(reply):
            self.kill()   # a CUDA error is sticky: the next check needs a fresh process
        return reply

    def kill(self):
        with CHILDREN_LOCK:
            if self.proc is not None and self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
            if self.proc is not None:
                WorkerHandle.live_pids.discard(getattr(self.proc, "pid", None))
                _end_orphans(getattr(self, "children_before", set()) | WorkerHandle.live_pids)
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.proc = None if self.proc is None else self.proc

    def close(self):
        if self.proc is not None and self.proc.is_alive() and self.conn is not None:
            try:
                protocol.send(self.conn, {"cmd": "exit"})
                self.proc.join(5)
            except Exception:
                pass
        self.kill()
        self.proc = None


def _poisons_context(reply: dict) -> bool:
    text = f"{reply.get('type', '')} {reply.get('message', '')}".lower()
    return any(s in text for s in ("cuda error", "illegal memory", "illegal address", "out of memory",
                                   "cudaerror", "cuda_error", "misaligned address", "unspecified launch"))


def _signal_name(code) -> str:
    if code is None or code >= 0:
        return ""
    import signal
    try:
        return f", {signal.Signals(-code).name}"
    except ValueError:
        return ""


# ---- processes a submission leaves behind --------------------------------------------------------------
# A student's process may start others, even in a new session (setsid) so that killing its process group
# misses them. On Linux the grading process makes itself a "child subreaper": when the worker dies, its
# orphaned descendants are re-parented to the grading process instead of init, so they can be found (as
# our children we did not start) and killed. Elsewhere this is a no-op (and the leak remains).

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False
# Held while the grader starts or runs a child of its own (a worker, nvcc, nvidia-smi: `run_child`) and
# while it hunts strays, so that under `labs gradebook --jobs N` (threads) one thread never takes another
# thread's nvcc for a stray. Known gap: a worker that dies on its own leaves orphans that a worker started
# by another thread before this one's kill() may count as its own; they are still ended when that worker is.
CHILDREN_LOCK = threading.RLock()


def run_child(cmd, **kwargs):
    """subprocess.run for the grader's own helpers (nvcc, nvidia-smi): never mistaken for a stray."""
    import subprocess
    with CHILDREN_LOCK:
        return subprocess.run(cmd, **kwargs)


def _become_subreaper() -> None:
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        pass


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid` (Linux /proc; empty elsewhere)."""
    out = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            fields = open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.add(int(e))
    return out


def _own_helpers() -> set[int]:
    """Children this process starts for itself outside run_child: multiprocessing's resource tracker
    (started, or restarted, by whichever spawn needs it first). Killing it only makes Python warn and
    relaunch it, but it is not a stray."""
    try:
        from multiprocessing import resource_tracker
        pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    except (ImportError, AttributeError):
        return set()
    return {pid} if pid else set()


def _end_orphans(keep: set[int]) -> None:
    """Kill our children that we did not start (re-parented orphans of a dead worker), and theirs in turn."""
    if not _subreaper:
        return
    me = os.getpid()
    for _ in range(10):                     # killing one re-parents its own children to us: repeat
        time.sleep(0.05)                    # re-parenting happens as the dying process exits
        strays = _children(me) - keep - _own_helpers()
        if not strays:
            return
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in strays:
            try:
                os.waitpid(pid, 0)          # our children now: reap them, leave no zombies
            except ChildProcessError:
                pass
