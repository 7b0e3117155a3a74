"""View machinery: a :class:`View` is a list of parts that renders in Jupyter and as a standalone page.

CircuitsVis' own objects ping google.com when shown (to choose between its inlined
bundle and a CDN) and their ``str()`` always points at the CDN.  ftlens never calls
that code: it reads CircuitsVis' prebuilt bundle (``circuitsvis/dist/cdn/iife.js``)
from disk and emits

- in a notebook (``View._repr_html_``): the bundle inlined once per output cell, so
  a saved notebook still renders offline (``set_inline(False)`` switches to the CDN);
- in a standalone page (:meth:`View.html`, :func:`page`): the bundle inlined ONCE in
  the page, then one small ``CircuitsVis.render(...)`` call per figure.

JavaScript and CSS live in packaged files beside this module (``*.js``, ``page.css``),
read with :mod:`importlib.resources`; Python fills their ``__SLOT__`` placeholders with
JSON (:func:`script`, :func:`to_json`) or a checked identifier (:func:`identifier`), never
with code.  Nothing here touches the network.
"""

from __future__ import annotations

import functools
import html as htmllib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from ..fileio import atomic_write_text

__all__ = ["View", "Part", "page", "set_inline", "bundle_js", "asset", "script", "to_json", "identifier",
           "heading", "note", "CSS", "ROLE_COLORS", "HEAD_UNIT", "RELAYED_UNIT", "display_tokens", "color",
           "sig", "figure_part", "pyplot"]

_INLINE = True
_SLOT = re.compile(r"__([A-Z][A-Z0-9_]*)__")


def set_inline(inline: bool = True) -> None:
    """Notebook rendering: inline the CircuitsVis bundle (default, offline-safe) or use the CDN."""
    global _INLINE
    _INLINE = bool(inline)


# ---------------------------------------------------------------------- packaged files
@functools.lru_cache(maxsize=None)
def asset(name: str) -> str:
    """Text of a file packaged with ``ftlens.render`` (``head_grid.js``, ``page.css``, ...)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """Make text safe inside ``<script>``: no ``</script>`` / ``<!--`` can end it early."""
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def to_json(value: Any, *, allow_nan: bool = False) -> str:
    """``value`` as a JSON literal that is safe inside ``<script>``."""
    return _script_safe(json.dumps(value, ensure_ascii=False, allow_nan=allow_nan))


def identifier(name: str) -> str:
    """A JavaScript identifier (e.g. a CircuitsVis component name), checked: never arbitrary text."""
    if not name.isidentifier():
        raise ValueError(f"not a JavaScript identifier: {name!r}")
    return name


def script(name: str, **slots: str) -> str:
    """The packaged script ``name`` with each ``__KEY__`` replaced by ``slots[key.lower()]``.

    Slot values are JSON (:func:`to_json`) or identifiers (:func:`identifier`); they are
    substituted in one pass, so text inside a value is never read as a slot.
    """
    text = asset(name).rstrip("\n")

    def fill(m: re.Match) -> str:
        key = m.group(1).lower()
        if key not in slots:
            raise KeyError(f"{name}: no value for slot __{m.group(1)}__")
        return slots[key]

    return _SLOT.sub(fill, text)


CSS = asset("page.css")


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """CircuitsVis' prebuilt browser bundle, read from the installed package (no network)."""
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or spec.origin is None:  # pragma: no cover
        raise ImportError("circuitsvis is not installed")
    path = Path(spec.origin).parent / "dist" / "cdn" / "iife.js"
    return _script_safe(path.read_text(encoding="utf-8"))


def _cv_version() -> str:
    from importlib.metadata import version

    return version("circuitsvis")


def _props_json(props: dict[str, Any]) -> str:
    def conv(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.detach().float().cpu().tolist()
        if hasattr(v, "tolist"):
            return v.tolist()
        return v

    return to_json({k: conv(v) for k, v in props.items() if v is not None})


# ---------------------------------------------------------------------- View
@dataclass
class Part:
    """One piece of a view: a CircuitsVis component (``component`` + ``props``) or ``html``."""

    html: str = ""
    component: str | None = None
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class View:
    """A renderable figure: shows itself in Jupyter and writes standalone offline HTML."""

    parts: list[Part]
    title: str = ""

    def __repr__(self) -> str:
        kinds = [p.component or "html" for p in self.parts]
        return f"View({self.title!r}, parts={kinds})"

    def __add__(self, other: "View") -> "View":
        return View(self.parts + other.parts, self.title or other.title)

    def body(self, *, cdn: bool = False) -> str:
        """The page body: HTML parts and one render call per CircuitsVis part."""
        out = ['<div class="ftlens">']
        for p in self.parts:
            if p.component is None:
                out.append(p.html)
                continue
            uid = "ftcv-" + uuid.uuid4().hex[:12]
            slots = {"id": to_json(uid), "component": identifier(p.component), "props": _props_json(p.props)}
            out.append(p.html)
            out.append(f'<div id="{uid}" class="ft-cv" data-component="{p.component}"></div>')
            if cdn:
                url = f"https://unpkg.com/circuitsvis@{_cv_version()}/dist/cdn/esm.js"
                out.append(f'<script type="module">{script("circuitsvis_render_cdn.js", url=to_json(url), **slots)}</script>')
            else:
                out.append(f"<script>{script('circuitsvis_render.js', **slots)}</script>")
        out.append("</div>")
        return "\n".join(out)

    def needs_bundle(self) -> bool:
        return any(p.component is not None for p in self.parts) or any("CircuitsVis." in p.html for p in self.parts)

    def fragment(self, *, inline: bool | None = None) -> str:
        """HTML for a notebook output cell: CSS, the bundle once (if inline), the body."""
        inline = _INLINE if inline is None else inline
        head = f"<style>{CSS}</style>"
        if inline and self.needs_bundle():
            head += f"<script>{bundle_js()}</script>"
        return head + self.body(cdn=not inline)

    def _repr_html_(self) -> str:
        return self.fragment()

    def html(self) -> str:
        """A standalone page: the bundle inlined once, works from ``file://`` offline."""
        bundle = f"<script>{bundle_js()}</script>" if self.needs_bundle() else ""
        title = htmllib.escape(self.title or "ftlens")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style>{bundle}</head>\n<body>\n"
            f"{self.body()}\n</body></html>\n"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`html` atomically."""
        return atomic_write_text(path, self.html())


def page(*views: View, title: str = "ftlens") -> View:
    """Several views as one page (one bundle)."""
    parts: list[Part] = []
    for v in views:
        parts += v.parts
    return View(parts, title)


# ---------------------------------------------------------------------- parts every view family uses
def heading(text: str, level: int = 2) -> Part:
    """A section heading (text escaped)."""
    return Part(html=f"<h{level}>{htmllib.escape(text)}</h{level}>")


def note(text: str) -> Part:
    """A small note under a figure (``text`` is HTML)."""
    return Part(html=f'<div class="ft-note">{text}</div>')


# ---------------------------------------------------------------------- helpers every view family uses
ROLE_COLORS = {"template": "#9e9e9e", "prompt": "#1f77b4", "reasoning": "#ff7f0e", "output": "#2ca02c",
               "other": "#7f7f7f"}
#: The one head ranking every view uses (``Trace.top_heads`` default, README "Ranking heads").
HEAD_UNIT = "route-weighted mass"
#: What a reasoning token's colour means when the relayed mass is drawn (``Trace.relayed_mass``).
RELAYED_UNIT = "relayed mass (share of the answer's attribution, which totals 1)"


def display_tokens(tokens: Sequence[str]) -> list[str]:
    """Make whitespace visible: newline as '↵', keep other text."""
    return [t.replace("\n", "↵") if t.strip() == "" or "\n" in t else t for t in tokens]


def color(v: float, vmax: float) -> str:
    x = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    r, g, b = (int(255 - x * (255 - c)) for c in (8, 81, 156))
    return f"rgb({r},{g},{b})"


def sig(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant digits (route-weighted values can be ~1e-6)."""
    return float(f"{x:.{digits}g}")


def figure_part(fig: Any) -> Part:
    """A matplotlib figure as inline SVG (no files, no network)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return Part(html=svg[svg.find("<svg"):])


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("these views need matplotlib: pip install matplotlib") from exc
    return plt
