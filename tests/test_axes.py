"""Every jaxtyping shape in the package speaks the one axis vocabulary of ftlens.axes."""

from __future__ import annotations

import re
from pathlib import Path

import ftlens
from ftlens.axes import AXES

SHAPE = re.compile(r"\b(?:Float|Int|Bool|Shaped)\[\s*Tensor\s*,\s*\"([^\"]*)\"\s*\]")


def _shapes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in Path(ftlens.__file__).parent.rglob("*.py"):
        for shape in SHAPE.findall(path.read_text()):
            for axis in shape.split():
                if axis in ("...",) or axis.isdigit():
                    continue
                found.setdefault(axis.lstrip("*#"), set()).add(path.name)
    return found


def test_every_annotated_axis_is_in_the_vocabulary():
    found = _shapes()
    assert len(found) >= 8  # the scan sees the engine's annotations
    unknown = {axis: sorted(files) for axis, files in found.items() if axis not in AXES}
    assert unknown == {}


def test_the_scan_catches_an_unknown_axis():
    assert SHAPE.findall('x: Float[Tensor, "layer foo"]') == ["layer foo"]
