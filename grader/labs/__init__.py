"""One spec module per lab: grader/labs/labNN_name.py, each defining SPEC (a grader.spec.LabSpec)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from ..spec import LabSpec


class UnknownLab(KeyError):
    def __str__(self):
        return self.args[0]


@lru_cache(maxsize=None)
def _modules() -> dict[str, str]:
    return {name.split("_")[0]: name for _, name, _ in pkgutil.iter_modules(__path__) if name.startswith("lab")}


def lab_ids() -> list[str]:
    return sorted(_modules())


@lru_cache(maxsize=None)
def get(lab: str) -> LabSpec:
    key = lab.split("_")[0].lower()
    if key.isdigit():
        key = f"lab{int(key):02d}"
    mods = _modules()
    if key not in mods:
        raise UnknownLab(f"no lab named {lab!r}; labs: {', '.join(lab_ids()) or 'none'}")
    return importlib.import_module(f"{__name__}.{mods[key]}").SPEC


def all_specs() -> list[LabSpec]:
    return [get(i) for i in lab_ids()]
