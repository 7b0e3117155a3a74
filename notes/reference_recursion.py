"""Which ingredient of the reference closes the twohop Recovery gap?  (Exploration, 2026-11-26.)

Run: ``.venv/bin/python notes/reference_recursion.py 10`` (needs analyses/results/recovery_settings.csv
for the reference's per-example Recovery).  On the held-out seed-100 examples (10 per task) it
prints Recovery@10% of ftlens span passes with the explained span's stop rows (',' '.' blank)
kept or dropped, stop sources kept or zeroed, and a reference-style hop (the whole target
re-traced, weighted by the pass's mass on it).  Seen: ``tgt-droprows-refhop`` equals the reference
on twohop / needle_multikey / arith / vartrack (0.379 / 0.505 / 0.200 / 0.200); ``tgt-droprows``
alone gives 0.384 on twohop.  The library option this led to is ``stop_rows="skip"``.
"""
import sys, csv, math, json, torch
sys.path.insert(0, "/work/main/analyses")
torch.set_num_threads(2)
import ftlens
from ftlens.eval.tasks import make_examples
from ftlens.eval.cases import build_case
from ftlens.eval.metrics import recovery
from ftlens.pipeline import prepare
from ftlens.aggregate import span_shares
from ftlens.recursion import explained_span
from faithfulness import punct_mask

m = ftlens.load_model()
tok = m.tokenizer
ref = {}
for r in csv.DictReader(open("/work/main/analyses/results/recovery_settings.csv")):
    if r["method"] in ("reference", "flashtrace-target-h0", "flashtrace-target-h1", "flashtrace-h0"):
        ref[(r["task"], r["id"], r["method"])] = float(r["recovery"])
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
res = {}
for task, length in (("twohop", 128), ("needle_multikey", 256), ("arith", 128), ("vartrack", 128)):
    label = f"{task}@{length}"
    for ex in make_examples(task, tok, n, length, seed=100):
        seq, case, fmt = build_case(m, ex)
        cap = prepare(m, ex["prompt"], ex["target"])
        assert cap.seq.ids.tolist() == seq.ids.tolist()
        p0 = cap.seq.prompt_len
        punct = punct_mask(tok, seq.ids)
        keep_src = (~punct).float()
        def pass_(lo, hi, w=None, drop_stop=True):
            wt = torch.zeros(seq.n - p0)
            if w is None:
                w = torch.ones(hi - lo)
            wt[lo - p0:hi - p0] = w
            if drop_stop:
                wt = wt * keep_src[p0:]
            return span_shares(cap.states, cap.info, cap.row_pos, wt, None, tol=cap.tol).raw_scores.cpu()
        out = {}
        lo_t, hi_t = explained_span(seq.output, seq.reasoning, "target")
        lo_o, hi_o = seq.output
        inputs = torch.zeros(seq.n); inputs[:p0] = 1
        for name, (lo, hi) in (("tgt", (lo_t, hi_t)), ("out", (lo_o, hi_o))):
            for drop in (False, True):
                v = pass_(lo, hi, drop_stop=drop)
                key = f"{name}{'-droprows' if drop else ''}"
                out[key] = v * inputs
                out[key + "-masksrc"] = v * inputs * keep_src
                # reference-style hop over the whole target span [lo_t, hi_t), weighted by mass on it
                span_mass = v[lo_t:hi_t] * (keep_src[lo_t:hi_t] if drop else 1)
                ratio = float(span_mass.sum() / v.sum())
                h = pass_(lo_t, hi_t, w=span_mass / span_mass.sum(), drop_stop=False)
                out[key + "-refhop"] = (v + ratio * h) * inputs * (keep_src if drop else 1)
        for k, s in out.items():
            ps = s[case.prompt_pos].float()
            res.setdefault((label, k), []).append(recovery(ps, case.evidence, 10.0))
        for mth in ("reference", "flashtrace-target-h0", "flashtrace-target-h1", "flashtrace-h0"):
            if (label, ex["id"], mth) in ref:
                res.setdefault((label, "csv:" + mth), []).append(ref[(label, ex["id"], mth)])
    for (lab, k), v in sorted(res.items()):
        if lab == label:
            print(f"{lab:22s} {k:28s} {sum(v)/len(v):.3f} (n={len(v)})", flush=True)
