"""Head studies over a dataset: which heads carry attribution, how stably, and whether ablating
them hurts the answer.

One job per module: :mod:`.records` (input records: ``ftlens batch`` records plus evidence and
segments), :mod:`.shard` (which records this process does: ``--shard``, torchrun, Slurm arrays),
:mod:`.extract` (per example, only what a head study needs), :mod:`.stats` (intervals, ranks,
split halves), :mod:`.aggregate` (the tables across examples), :mod:`.causal` (zero/mean
ablation of head sets), :mod:`.tables` (schema; Parquet or CSV), :mod:`.run`
(:func:`run_study`: the per-example pass on the job runner :mod:`ftlens.jobs`, and
:func:`causal_pass`), :mod:`.merge` (:func:`merge`), :mod:`.result` (:class:`Study`, the tables;
its views are :mod:`ftlens.render.study_views`).  Schema and workflow:
``docs/study.md``.
"""

from __future__ import annotations

from .records import StudyRecord, read_study_records
from .merge import merge
from .result import Study
from .run import causal_pass, run_study
from .shard import shard_from_env
from .tables import SCHEMA

__all__ = ["Study", "StudyRecord", "run_study", "causal_pass", "merge", "shard_from_env", "read_study_records", "SCHEMA"]
