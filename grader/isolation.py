"""A student's process on a leash: spawned, time-limited, restarted after a crash or hang."""

from __future__ import annotations

import multiprocessing as mp

from . import protocol, worker

STARTUP_TIMEOUT_S = 300.0


class StudentFailure(Exception):
    """The student's process hung, crashed or broke the protocol; the message says which."""


class WorkerHandle:
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
        self.proc.start()
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
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
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
