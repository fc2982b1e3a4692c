"""Per-GPU-model calibration of the speed tiers.

A lab's speed tiers (`Benchmark.tiers`) are written for the reference GPU (REFERENCE_GPU, an H100 SXM):
"full marks at 0.85x a device copy" is what the reference solution can reach there. On another card the
same solution may reach less (or more) of the baseline, for reasons no student controls: a different
ratio of bandwidth to launch latency, cuBLAS tuned differently, fewer SMs for the same grid. So each GPU
model gets a JSON file here, `<slug>.json`, holding the reference solutions' measured ratios:

    {"gpu": "NVIDIA H100 80GB HBM3", "measured": "2026-11-27 ...", "command": "...",
     "ratios": {"lab03": {"softmax-bf16-4096x4096-copy": 1.014, ...}, ...}}

When the grading GPU has a file and the benchmark appears in both it and the reference GPU's file, every
tier edge of that benchmark is scaled by `ratio_here / ratio_reference`: a tier then asks for the same
fraction of what the reference solution reaches on this card. Without a file the tiers apply as written
and the report says the GPU is uncalibrated. `labs calibrate LAB` (instructors, once per GPU model)
grades the solutions on the current GPU and writes the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE_GPU = "NVIDIA H100 80GB HBM3"
SCALE_LIMITS = (0.25, 2.0)       # a factor outside these means a broken calibration, not a slower card


def slug(gpu_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "unknown"


def path_for(gpu_name: str) -> Path:
    return HERE / f"{slug(gpu_name)}.json"


def load(gpu_name: str) -> dict | None:
    p = path_for(gpu_name)
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    if not isinstance(data.get("ratios"), dict):
        raise ValueError(f"{p}: no 'ratios' object")
    return data


def factor(gpu_name: str, lab: str, bench: str) -> tuple[float, str]:
    """(scale for the tier edges, a note for the report)."""
    if gpu_name == REFERENCE_GPU:
        return 1.0, ""
    here, ref = load(gpu_name), load(REFERENCE_GPU)
    if here is None:
        return 1.0, f"tiers as set on the {REFERENCE_GPU}; this GPU is uncalibrated (labs calibrate {lab})"
    r_here = here["ratios"].get(lab, {}).get(bench)
    r_ref = (ref or {}).get("ratios", {}).get(lab, {}).get(bench)
    if not r_here:
        return 1.0, f"tiers as set on the {REFERENCE_GPU}; no calibration of this benchmark on this GPU"
    if not r_ref:
        return 1.0, (f"tiers as set; the reference solution misses this benchmark's target on the {REFERENCE_GPU}, "
                     f"which holds no ratio to scale by")
    f = r_here / r_ref
    lo, hi = SCALE_LIMITS
    if not lo <= f <= hi:
        return 1.0, (f"calibration ignored: the reference solution's ratio here ({r_here:.2f}x) vs on the "
                     f"{REFERENCE_GPU} ({r_ref:.2f}x) gives an implausible factor {f:.2f}")
    return f, f"tiers scaled by {f:.2f} (reference solution: {r_here:.2f}x here, {r_ref:.2f}x on the {REFERENCE_GPU})"


def ratios_from_report(report: dict) -> dict[str, dict[str, float]]:
    """{lab: {benchmark: ratio}} from a `labs grade --json` report of the reference solutions: every speed
    check whose timing was valid, whatever tier it reached."""
    out: dict[str, dict[str, float]] = {}
    for lab in report["labs"]:
        for c in lab["checks"]:
            m = re.fullmatch(r"speed\[(.+)\]", c["name"])
            d = c.get("details") or {}
            ratio = d.get("ratio")
            # a valid measurement: full marks, or any tier at all (the speed check sets tier_scale only once
            # the timing passed its validity checks). A card slower than the reference GPU misses the full
            # mark until it is calibrated, so "pass" alone would never let it be calibrated.
            valid = c["status"] == "pass" or "tier_scale" in d
            if m and isinstance(ratio, (int, float)) and ratio > 0 and valid:
                out.setdefault(lab["lab"], {})[m.group(1)] = round(float(ratio), 4)
    return out


def write(gpu_name: str, ratios: dict[str, dict[str, float]], measured: str, command: str) -> Path:
    """Merge `ratios` into the GPU's file (labs not named keep their stored ratios)."""
    p = path_for(gpu_name)
    data = load(gpu_name) or {"gpu": gpu_name, "ratios": {}}
    data["ratios"].update(ratios)
    data.setdefault("runs", []).append({"measured": measured, "command": command, "labs": sorted(ratios)})
    p.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return p
