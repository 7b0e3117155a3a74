"""Head studies over a dataset: which heads carry attribution, how stably, and whether ablating
them hurts the answer.

One job per module: :mod:`.records` (input records: ``ftlens batch`` records plus evidence and
segments), :mod:`.shard` (which records this process does: ``--shard``, torchrun, Slurm arrays),
:mod:`.extract` (per example, only what a head study needs), :mod:`.stats` (intervals, ranks,
split halves), :mod:`.aggregate` (the tables across examples), :mod:`.causal` (zero/mean
ablation of head sets), :mod:`.tables` (schema; Parquet or CSV), :mod:`.run`
(:func:`run_study`, :func:`merge`, :class:`Study`), :mod:`.views`.  Schema and workflow:
``docs/study.md``.
"""

from __future__ import annotations

from .records import StudyRecord, read_study_records
from .run import Study, merge, run_study
from .shard import shard_from_env
from .tables import SCHEMA

__all__ = ["Study", "StudyRecord", "run_study", "merge", "shard_from_env", "read_study_records", "SCHEMA"]
