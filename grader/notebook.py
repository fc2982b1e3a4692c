"""`labs notebook LAB`: run a lab notebook's code cells top to bottom as one script, without Jupyter.

For GPU machines that have PyTorch but no Jupyter kernel (the course's GPU checks run this way). A bare
last expression of a cell is printed, as Jupyter would display it; figures are saved as PNG files in the
output folder. `--solutions` points the notebook at the reference solutions (the LABNN_DIR variable every
notebook honours). The stored notebook is never modified.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import REPO_ROOT

_PRELUDE = '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as _plt
_fig_count = [0]
def _save_figures(out={out!r}, lab={lab!r}):
    for n in _plt.get_fignums():
        _fig_count[0] += 1
        _plt.figure(n).savefig(f"{{out}}/{{lab}}_fig{{_fig_count[0]}}.png", dpi=100)
        _plt.close(n)
'''


def to_script(notebook: Path, out: Path, lab: str) -> str:
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    parts = [_PRELUDE.format(out=str(out), lab=lab)]
    for i, c in enumerate(cells):
        body = "".join(c["source"])
        lines = body.rstrip().splitlines()
        tree = ast.parse(body)
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1]
            expr = "\n".join(lines[last.lineno - 1:last.end_lineno])
            lines = lines[:last.lineno - 1] + ["_v = (", expr, ")", "if _v is not None:", "    print(repr(_v))"]
        parts.append(f"print('--- cell {i} ---', flush=True)\n" + "\n".join(lines) + "\n_save_figures()")
    return "\n\n".join(parts) + "\n"


def run(lab: str, solutions: bool, out: Path, timeout_s: float) -> int:
    from .labs import get
    spec = get(lab)
    if not spec.notebook:
        print(f"labs notebook: {spec.id} has no notebook", file=sys.stderr)
        return 2
    nb = REPO_ROOT / spec.path / spec.notebook
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    script = out / f"{spec.id}_notebook.py"
    script.write_text(to_script(nb, out, spec.id))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    if solutions:
        env[f"{spec.id.upper()}_DIR"] = str(REPO_ROOT / "solutions" / spec.path)
    t0 = time.perf_counter()
    # through -c: __main__ then has no file, so the grader's spawned workers do not re-run the notebook
    code = f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))"
    try:
        rc = subprocess.run([sys.executable, "-c", code], cwd=nb.parent, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"labs notebook: {spec.notebook} did not finish in {timeout_s:.0f} s", file=sys.stderr)
        return 1
    status = "ran top to bottom" if rc == 0 else f"FAILED (exit code {rc})"
    print(f"{spec.notebook}: {status} in {time.perf_counter() - t0:.0f} s; script and figures in {out}")
    return 0 if rc == 0 else 1
