"""Import a student's Python file by path, under a name that cannot collide with anything else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_file(path: Path, lab_dir: Path | None = None):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student file not found: {path}")
    if lab_dir is not None and str(lab_dir) not in sys.path:
        sys.path.insert(0, str(lab_dir))          # the lab's given helper modules
    name = f"student_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
