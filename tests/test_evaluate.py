"""Spec section 7 metrics pinned on hand-computed toy curves."""

from __future__ import annotations

import math

import pytest
import torch

from ftlens.eval import metrics as ev
from ftlens.eval.cases import Case
from ftlens.eval.scoring import Scorer, target_logprobs


def test_step_sizes_are_equal_groups_from_nothing_to_everything():
    assert ev.step_sizes(10, 5) == [0, 2, 4, 6, 8, 10]
    assert ev.step_sizes(3, 4) == [0, 1, 2, 2, 3]  # round(0.75)=1, round(1.5)=2, round(2.25)=2
    assert ev.step_sizes(7, 20)[0] == 0 and ev.step_sizes(7, 20)[-1] == 7


def test_ranking_is_descending_and_stable_on_ties():
    assert ev.ranking(torch.tensor([0.1, 0.5, 0.5, -1.0])).tolist() == [1, 2, 0, 3]


def test_normalised_deletion_clips_and_is_running_minimum():
    # s = [0, -1, -0.5, -3, -4], s_k=-4, |s0-sk|=4 -> [1, .75, .875, .25, 0] -> cummin
    sh = ev.normalise_deletion([0.0, -1.0, -0.5, -3.0, -4.0])
    assert sh.tolist() == pytest.approx([1.0, 0.75, 0.75, 0.25, 0.0])
    # values above s_0 clip to 1, constant curve gives zeros
    assert ev.normalise_deletion([0.0, 2.0, -4.0]).tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert ev.normalise_deletion([1.0, 1.0, 1.0]).tolist() == [0.0, 0.0, 0.0]


def test_rise_is_trapezoid_area_over_k():
    # s_hat = [1, .75, .75, .25, 0]; trapz = .875 + .75 + .5 + .125 = 2.25; /4
    assert ev.rise([0.0, -1.0, -0.5, -3.0, -4.0]) == pytest.approx(2.25 / 4)
    # immediate drop: [1, 0, 0] -> area .5 / 2
    assert ev.rise([0.0, -5.0, -5.0]) == pytest.approx(0.25)
    # no drop until the end: [1, 1, 0] -> 1.5 / 2
    assert ev.rise([0.0, 0.0, -5.0]) == pytest.approx(0.75)


def test_insertion_auc_is_running_max_area():
    # s' = [-4, -1, -3, 0]: (s-s0)/4 = [0, .75, .25, 1] -> cummax [0, .75, .75, 1]
    # trapz = .375 + .75 + .875 = 2.0; /3
    assert ev.insertion_auc([-4.0, -1.0, -3.0, 0.0]) == pytest.approx(2.0 / 3)


def test_mass_remaining_uses_positive_mass_in_rank_order():
    # scores [3, 1, 0, -2] (already ranked); positive mass 4; k=2: m = [0, 2, 4]
    d = ev.mass_remaining(torch.tensor([3.0, 1.0, 0.0, -2.0]), k=2)
    assert d.tolist() == pytest.approx([1.0, 0.0, 0.0])
    d = ev.mass_remaining(torch.tensor([1.0, 3.0, 0.0, 0.0]), k=4)  # ranked 3,1,0,0
    assert d.tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0, 0.0])
    # no positive mass -> uniform
    assert ev.mass_remaining(torch.tensor([-1.0, -1.0]), k=2).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_mas_hand_computed():
    # s = [0, -2, -4] -> s_hat [1, .5, 0]; d = [1, .2, 0]
    # c = clip(s_hat + |s_hat - d|) = [1, .8, 0]; min-max -> same; trapz = .9 + .4 = 1.3; /2
    assert ev.mas([0.0, -2.0, -4.0], [1.0, 0.2, 0.0]) == pytest.approx(1.3 / 2)
    # c rescaled: s_hat [1, 1, 0], d [1, 0, 0] -> c = [1, 1, 0] (clip 2 -> 1); trapz 1.5 / 2
    assert ev.mas([0.0, 0.0, -4.0], [1.0, 0.0, 0.0]) == pytest.approx(0.75)


def test_recovery_counts_evidence_in_top_ten_percent():
    scores = torch.arange(20, dtype=torch.float32)  # top 2 = indices 19, 18
    assert ev.recovery(scores, [19, 18]) == 1.0
    assert ev.recovery(scores, [19, 0]) == 0.5
    assert ev.recovery(scores, [0, 1, 2]) == 0.0
    assert ev.recovery(scores, [5], pct=50) == 0.0 and ev.recovery(scores, [15], pct=50) == 1.0
    assert math.isnan(ev.recovery(scores, []))


def test_top_slots_are_the_ceil_pct_highest_with_ties_in_order():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0, 0.5, 0.5, 0.1, 0.2, 0.3, 0.4])  # 11 -> ceil(1.1) = 2 slots
    assert ev.top_slots(scores).tolist() == [1, 2]
    assert ev.top_slots(scores, pct=30).tolist() == [1, 2, 4, 0]  # ceil(3.3) = 4
    assert ev.top_slots(scores[:3], pct=1).tolist() == [1]  # never fewer than one slot



def test_scorer_curves_on_tiny_model_are_consistent(tiny_llama):
    torch.manual_seed(0)
    ids = torch.randint(10, 500, (30,))
    case = Case(ids=ids, prompt_pos=list(range(2, 22)), target_start=24, output=(27, 30), evidence=[3, 4])
    sc = Scorer(tiny_llama, case, fill=7, k=4)
    scores = torch.randn(20)
    c = sc.curves(scores)
    d, ins = c["deletion"], c["insertion"]
    assert d.shape == (5, 2) and ins.shape == (5, 2)
    # endpoints: deletion starts at the original, ends with everything replaced; insertion reversed
    assert torch.allclose(d[0], ins[-1]) and torch.allclose(d[-1], ins[0])
    # the target variant includes the answer tokens and more
    x = ids.clone()
    x[torch.tensor(case.prompt_pos)[ev.ranking(scores)[:10]]] = 7
    lp = target_logprobs(tiny_llama, x[None], 24)
    assert float(lp[0, 3:].sum()) == pytest.approx(float(d[2, 0]), abs=1e-4)
    assert float(lp[0].sum()) == pytest.approx(float(d[2, 1]), abs=1e-4)
    m = sc.evaluate(scores)
    assert set(m) >= {"rise_answer", "rise_target", "mas_answer", "ins_target", "recovery"}
    assert all(0.0 <= m[k] <= 1.0 for k in m)


def test_target_logprobs_match_full_logits(tiny_llama):
    torch.manual_seed(1)
    ids = torch.randint(10, 500, (2, 12))
    lp = target_logprobs(tiny_llama, ids, 5)
    with torch.no_grad():
        logits = tiny_llama.original_model(input_ids=ids).logits.float()
    ref = torch.log_softmax(logits[:, 4:-1], -1).gather(-1, ids[:, 5:, None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-5)
