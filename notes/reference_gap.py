"""Where the reference's whole-target RISE edge on arith comes from (engineering note, not an analysis).

Held-out arith examples (seed 100, 128 prompt tokens), k = 20, punctuation mask on every method's
scores (faithfulness.py --mask-punct).  Compares the reference package at hops 0/1/2 with ftlens'
hop-0 span over reasoning + answer, once with every target row in the span and once with the
punctuation rows (',' '.' and blank tokens of the target) given weight 0, which is what the
reference does to its own hop-0 weights.

Run (2026-11-24, 2-core CPU, n = 6, alongside another job):  .venv/bin/python notes/reference_gap.py 6
    reference-h0                 0.1401 ± 0.0089
    reference-h1                 0.1421 ± 0.0102
    reference-h2                 0.1392 ± 0.0096
    ftlens span, all rows        0.1676 ± 0.0134   (= flashtrace-target-h0)
    ftlens span, no punct rows   0.1401 ± 0.0089   (= reference-h0)
So the gap is in the first pass, not the recursion, and dropping punctuation rows from the explained
span reproduces the reference's RISE exactly on these examples.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
import faithfulness as FA  # noqa: E402

import ftlens  # noqa: E402
from ftlens.eval import reference as R  # noqa: E402
from ftlens.eval import tasks as T  # noqa: E402
from ftlens.eval.cases import build_case  # noqa: E402
from ftlens.eval.scaffold import mean_se  # noqa: E402
from ftlens.eval.scoring import Scorer, default_fill  # noqa: E402
from ftlens.aggregate import span_shares  # noqa: E402
from ftlens.capture import capture, model_info  # noqa: E402


def main(n: int) -> None:
    model = ftlens.load_model(None)
    tok, info = model.tokenizer, model_info(model)
    fill = default_fill(tok)
    res: dict[str, list[float]] = {}
    for ex in T.make_examples("arith", tok, n, 128, seed=100):
        seq, case, fmt = build_case(model, ex)
        sc = Scorer(model, case, fill=fill, k=20, insertion=False)
        punct = FA.punct_mask(tok, seq.ids)
        scores = {f"reference-h{h}": R.reference_flashtrace(model, seq, fmt, hops=h) for h in (0, 1, 2)}
        p = seq.prompt_len
        states = capture(model, seq.ids, p, info)
        row_pos = torch.arange(p, seq.n)
        for name, drop in (("ftlens span, all rows", False), ("ftlens span, no punct rows", True)):
            w = torch.zeros(seq.n - p)
            w[seq.reasoning[0] - p : seq.output[1] - p] = 1.0
            if drop:
                w[punct[p:]] = 0.0
            scores[name] = span_shares(states, info, row_pos, w, None).scores.cpu()
        for name, s in scores.items():
            s = s.float().masked_fill(punct, 0.0)
            res.setdefault(name, []).append(sc.evaluate(s[case.prompt_pos])["rise_target"])
    for name, v in res.items():
        print(f"{name:28s} {mean_se(v)[0]:.4f} ± {mean_se(v)[1]:.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
