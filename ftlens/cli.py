"""The ``ftlens`` command line.

Exit codes: 0 ok, 1 failure (an ftlens error: bad input, missing model, bad file),
2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .errors import FtlensError


def _cmd_demo(args: argparse.Namespace) -> int:
    import ftlens

    from .examples import NEEDLE_PROMPT, NEEDLE_TARGET

    model = ftlens.load_model(args.model, device=args.device, dtype=args.dtype)
    tr = ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=args.hops, progress=not args.no_progress)
    print(tr.summary(args.top))
    out = Path(args.out)
    json_path = tr.save(out / "demo_trace.json")
    print(f"\nwrote {json_path}")
    try:
        from .render import write_html
    except ImportError:
        return 0
    html_path = write_html(tr, out / "demo_trace.html")
    print(f"wrote {html_path}")
    t = tr.timings
    print(f"time: capture {t['capture']:.2f}s, attribution {t['attribution']:.2f}s, total {t['total']:.2f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftlens",
        description="FlashTrace attribution on TransformerLens: which prompt tokens, through which "
        "layers and heads, produced a span of the model's output.",
        epilog="Exit codes: 0 ok, 1 failure (bad input, missing model, bad file), 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="trace the built-in needle example (with a reasoning chain) on the default model",
        epilog="example: ftlens demo --out results/demo --hops 2",
    )
    demo.add_argument("--out", default="results/demo", help="folder for demo_trace.json/.html")
    demo.add_argument("--model", default=None, help="HF name or local path (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)
    demo.add_argument("--hops", type=int, default=1)
    demo.add_argument("--top", type=int, default=10)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FtlensError as exc:
        print(f"ftlens: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
