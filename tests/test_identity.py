"""Behaviour identity (issue 20): the SmolLM2 needle summary, a step graph and a head study's
tables are what they were before the wings moved onto the spine (``tests/golden``, written by
``analyses/identity_check.py --write`` on the code before the refactor).

On the machine the goldens were written on (same processor, torch and thread count) the files
must be byte-identical; elsewhere float kernels may round the last bits differently, so numbers
are compared within a relative 1e-5 and all text exactly.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def _check_module():
    spec = importlib.util.spec_from_file_location("identity_check", ROOT / "analyses" / "identity_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_needle_summary_step_graph_and_study_tables_are_unchanged(default_model, tmp_path):
    ic = _check_module()
    threads = torch.get_num_threads()
    torch.set_num_threads(json.loads((GOLDEN / "machine.json").read_text())["threads"])
    try:
        fresh = ic.write(tmp_path / "now", default_model)
        same_machine = ic.machine() == json.loads((GOLDEN / "machine.json").read_text())
    finally:
        torch.set_num_threads(threads)
    result = ic.compare(GOLDEN, fresh, None if same_machine else 1e-5)
    assert set(result) == set(ic.files(GOLDEN)), result
    assert all(result.values()), {k: v for k, v in result.items() if not v}
