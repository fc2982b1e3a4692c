"""Messages between the grading process and the student's process, with no pickle on the way back.

Unpickling runs code, so a message from the student's process is JSON plus raw tensor bytes: whatever
the student's process sends, the grader only ever builds dicts, lists, numbers, strings and plain CPU
tensors of an allowed dtype from it.
"""

from __future__ import annotations

import json

import torch

from .spec import DTYPE_NAMES, DTYPES

MAX_MESSAGE_BYTES = 8 << 30


def send(conn, obj) -> None:
    tensors: list[torch.Tensor] = []

    def enc(x):
        if isinstance(x, torch.Tensor):
            t = x.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            tensors.append(t.contiguous())
            return {"__tensor__": len(tensors) - 1, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        if isinstance(x, dict):
            return {str(k): enc(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        return repr(x)

    header = json.dumps(enc(obj)).encode()
    conn.send_bytes(header)
    for t in tensors:
        if t.numel():
            conn.send_bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        else:
            conn.send_bytes(b"")


def recv(conn):
    header = json.loads(conn.recv_bytes(MAX_MESSAGE_BYTES))
    refs: list[dict] = []

    def collect(x):
        if isinstance(x, dict):
            if "__tensor__" in x:
                refs.append(x)
            else:
                for v in x.values():
                    collect(v)
        elif isinstance(x, list):
            for v in x:
                collect(v)

    collect(header)
    built = {}
    for ref in sorted(refs, key=lambda r: r["__tensor__"]):
        raw = conn.recv_bytes(MAX_MESSAGE_BYTES)
        dtype = DTYPES[ref["dtype"]]
        shape = [int(s) for s in ref["shape"]]
        if raw:
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
        else:
            t = torch.empty(shape, dtype=dtype)
        built[ref["__tensor__"]] = t

    def dec(x):
        if isinstance(x, dict):
            if "__tensor__" in x:
                return built[x["__tensor__"]]
            return {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        return x

    return dec(header)
