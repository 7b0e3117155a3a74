"""What the analysis scripts in ``analyses/`` share, so that each script holds only its study.

A script's life, in the order it uses these pieces:

1. :func:`parser` with the script's docstring, :func:`add_flags` for the common flags
   (``--model --n --seed --out --quick --no-progress --threads --from-csv``; a script names the
   ones it takes and may change their defaults and help), then its own flags;
2. :meth:`Run.start`: the output folder, torch's thread count, and the command line that is
   recorded with the results (``Command: `python analyses/<script> <args>```);
3. :meth:`Run.dataset`: generate examples and save them under ``<out>/datasets/``;
4. :meth:`Run.progress` over the jobs, :func:`write_csv` of the per-example rows after each;
5. :func:`summarise`: mean ± standard error per group of rows (:func:`mean_se`);
6. :meth:`Run.header` + :func:`markdown_table` for the markdown report, :func:`write_text`;
7. :func:`figure` for the PNG; :meth:`Run.done` prints where the report went.

A rebuild from a per-example CSV (``--from-csv``) reads it back with :func:`read_csv`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..fileio import atomic_write_text
from .tasks import make_examples, read_jsonl, seed_tag, write_jsonl

DEFAULT_OUT = "analyses/results"
DEFAULT_MODEL_LABEL = "default (SmolLM2-135M-Instruct)"

#: The common flags: name -> ``add_argument`` keywords (:func:`add_flags` may change them).
FLAGS: dict[str, dict[str, Any]] = {
    "model": dict(default=None, help="model name (default: ftlens default model); 'tiny' = tiny random Llama"),
    "n": dict(type=int, default=20, help="examples per task"),
    "seed": dict(type=int, default=0),
    "out": dict(default=DEFAULT_OUT),
    "quick": dict(action="store_true", help="CI smoke run"),
    "no-progress": dict(action="store_true", help="no progress bar"),
    "threads": dict(type=int, default=None, metavar="N",
                    help="CPU threads torch may use (torch.set_num_threads; default: torch's choice)"),
    "from-csv": dict(default=None,
                     help="only rebuild summary/markdown/PNG from an existing per-example CSV (e.g. a partial run)"),
}


# ---------------------------------------------------------------------------- command line
def parser(doc: str | None, **kw: Any) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's docstring as written."""
    kw.setdefault("description", doc)
    return argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def add_flags(p: argparse.ArgumentParser, *names: str, **changes: dict[str, Any]) -> None:
    """Add the common flags ``names`` (keys of :data:`FLAGS`) to ``p``, in that order.

    ``changes["no_progress"] = {"help": ...}`` updates one flag's ``add_argument`` keywords.
    """
    unknown = set(names) - set(FLAGS) | {c.replace("_", "-") for c in changes} - set(names)
    if unknown:
        raise ValueError(f"unknown or unnamed common flags: {sorted(unknown)}")
    for name in names:
        p.add_argument(f"--{name}", **{**FLAGS[name], **changes.get(name.replace("-", "_"), {})})


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python analyses/<script> <args>``, shell-quoted: how to run this again."""
    args = argv if argv is not None else sys.argv[1:]
    return f"python analyses/{script} " + " ".join(shlex.quote(x) for x in args)


def set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch's intra-op CPU threads for this run (unset: torch's choice)."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


@dataclass
class Run:
    """One run of an analysis script: its parsed flags, output folder and command line."""

    args: argparse.Namespace
    out: Path
    command: str

    @classmethod
    def start(cls, script: str, args: argparse.Namespace, argv: Sequence[str] | None) -> "Run":
        """Record the command line, create ``--out`` and apply ``--threads``."""
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        set_threads(args)
        return cls(args=args, out=out, command=command_line(script, argv))

    @property
    def model_label(self) -> str:
        """The model as the reports name it."""
        return self.args.model or DEFAULT_MODEL_LABEL

    def path(self, name: str) -> Path:
        return self.out / name

    def dataset(self, task: str, tokenizer: Any, n: int, length: int, *, name: str | None = None,
                **kw: Any) -> list[dict[str, Any]]:
        """:func:`~ftlens.eval.tasks.make_examples` at ``--seed``, saved as
        ``<out>/datasets/<name><seed tag>.jsonl`` (``name`` defaults to ``<task>-<length>``)."""
        seed = self.args.seed
        exs = make_examples(task, tokenizer, n, length, seed=seed, **kw)
        path = self.out / "datasets" / f"{name or f'{task}-{length}'}{seed_tag(seed)}.jsonl"
        if not _extends(path, exs):  # a smaller run at the same seed keeps the larger file it is a prefix of
            write_jsonl(exs, path)
        return exs

    def task_jobs(self, tasks: Sequence[str], tokenizer: Any, n: int, chain_length: int,
                  needle_length: int) -> list[tuple[str, dict[str, Any]]]:
        """``(label, example)`` for ``n`` examples of each task (needle tasks at ``needle_length``
        prompt tokens, the others at ``chain_length``), datasets saved as :meth:`dataset` does."""
        jobs = []
        for task in tasks:
            length = needle_length if task.startswith("needle") else chain_length
            jobs += [(f"{task}@{length}", ex) for ex in self.dataset(task, tokenizer, n, length)]
        return jobs

    def progress(self, jobs: Iterable, desc: str) -> Any:
        """A progress bar over ``jobs`` (silent with ``--no-progress``)."""
        from tqdm.auto import tqdm

        return tqdm(jobs, desc=desc, disable=self.args.no_progress)

    def header(self, title: str) -> list[str]:
        """The report's first lines: its title and the command that wrote it."""
        return [f"# {title}", "", f"Command: `{self.command}`", ""]

    def done(self, name: str, rows: Sequence, elapsed: float) -> None:
        print(f"wrote {self.out}/{name} ({len(rows)} rows, {elapsed:.0f} s)")


def _extends(path: Path, exs: list[dict[str, Any]]) -> bool:
    """Whether ``path`` already holds ``exs`` as its first records (same seed, larger n)."""
    if not path.is_file():
        return False
    try:
        held = read_jsonl(path)
    except (OSError, ValueError):
        return False
    return len(held) >= len(exs) and held[: len(exs)] == exs


# ---------------------------------------------------------------------------- summaries
def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, standard error (``std(ddof=1) / sqrt(n)``, 0 for one value) and ``n``; NaNs dropped."""
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan"), 0
    n = len(v)
    mu = sum(v) / n
    if n == 1:
        return mu, 0.0, 1
    var = sum((x - mu) ** 2 for x in v) / (n - 1)
    return mu, math.sqrt(var / n), n


def summarise(
    rows: Sequence[dict], by: Sequence[str], metrics: Sequence[str], *,
    extra: Callable[[list[dict]], dict] | None = None,
) -> list[dict]:
    """One row per group of ``rows`` with equal values of the ``by`` columns (first-seen order).

    Columns: the ``by`` values, then ``extra(group)`` if given, then for every metric ``m`` its
    :func:`mean_se` as ``m`` and ``m_se``; ``n`` is the most non-NaN values any metric has,
    unless ``extra`` sets it.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[c] for c in by), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(by, key))
        d.update(extra(rs) if extra is not None else {})
        count = "n" not in d
        for m in metrics:
            mu, se, n = mean_se([r[m] for r in rs])
            d[m], d[m + "_se"] = mu, se
            if count:
                d["n"] = max(d.get("n", 0), n)
        out.append(d)
    return out


# ---------------------------------------------------------------------------- files
def write_csv(path: Path | str, rows: Sequence[dict], fields: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV, atomically.  Columns: ``fields`` (other keys left out), else the
    union of the rows' keys in first-seen order (no rows and no ``fields``: nothing written)."""
    if not rows and fields is None:
        return
    keys: list[str] = list(fields) if fields is not None else []
    if fields is None:
        for r in rows:
            keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path | str, *, floats: Sequence[str] = (), ints: Sequence[str] = ()) -> list[dict]:
    """Rows of a CSV this module wrote, with the ``floats`` columns parsed back (empty: NaN)
    and the ``ints`` columns as integers."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            d = dict(r)
            for c in floats:
                d[c] = float(d[c]) if d.get(c) not in (None, "") else float("nan")
            for c in ints:
                d[c] = int(d[c])
            rows.append(d)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_text(path: Path | str, text: str) -> None:
    """Write a report (UTF-8), atomically."""
    atomic_write_text(path, text)


@contextlib.contextmanager
def figure(path: Path | str, nrows: int = 1, ncols: int = 1, **kw: Any) -> Iterator[tuple[Any, Any]]:
    """``(fig, axes)`` of ``plt.subplots(nrows, ncols, **kw)`` on the Agg backend; on exit the
    figure is laid out tightly, saved to ``path`` at 110 dpi and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **kw)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
