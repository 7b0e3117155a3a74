"""Does counting a step's self-mass as originating there fix the step ranking?  (Exploration, 2026-11-26.)

Run: ``.venv/bin/python notes/step_origin.py`` (needs analyses/results/step_causal.csv for the
measured drops).  On the 48 held-out examples of step_causal.md it ranks steps by the graph's
``relayed``, the direct edge, the inflow of the chain without folding self-loops
(``inflow_unfolded``), that inflow times the step's self-loop ``W[S, S]`` (``origin``: the mass that
originates at the step's own tokens) and ``W[S, S]`` alone, and prints the mean Spearman with the
drops and top - random per task.  Seen: origin -0.05 overall, -1.00 on arith (as relayed).
"""
import sys, csv, json, torch
sys.path.insert(0, "/work/main/analyses")
torch.set_num_threads(2)
import ftlens
from ftlens.eval.tasks import make_examples
from ftlens.eval.cases import build_case
from ftlens.stepgraph import step_graph
from ftlens.study.stats import spearman
m = ftlens.load_model(); tok = m.tokenizer
drops = {}
for r in csv.DictReader(open("/work/main/analyses/results/step_causal.csv")):
    if r["weighting"] == "graph":
        drops[r["id"]] = (json.loads(r["drops"]), json.loads(r["weights"]))
res = {}
for task, L in (("twohop",128),("arith",128),("vartrack",128),("needle_multivalue",256)):
    for ex in make_examples(task, tok, 12, L, seed=100):
        seq, case, _ = build_case(m, ex)
        g = step_graph(m, ex["prompt"], ex["target"])
        r0, r1 = seq.reasoning
        node_ids = [i for i in g.steps if r0 <= g.nodes[i].start and g.nodes[i].end <= r1]
        d, wg = drops[ex["id"]]
        assert abs(float(g.relayed[node_ids[0]]) - wg[0]) < 1e-4
        E = g.edges.double(); tr = g.traced; n = E.shape[1]
        inflow = torch.zeros(n, dtype=torch.float64)
        inflow[tr[:-1]] = E[-1, tr[:-1]]
        for row in range(len(tr) - 2, -1, -1):
            s = tr[row]
            inflow[tr[:row]] += inflow[s] * E[row, tr[:row]]
        selfw = {tr[i]: float(E[i, tr[i]]) for i in range(len(tr))}
        W = {"relayed": [float(g.relayed[i]) for i in node_ids],
             "direct": [float(E[-1, i]) for i in node_ids],
             "inflow_unfolded": [float(inflow[i]) for i in node_ids],
             "origin": [float(inflow[i]) * selfw[i] for i in node_ids],
             "self": [selfw[i] for i in node_ids]}
        for k, w in W.items():
            top = max(range(len(w)), key=lambda i: (w[i], -i))
            pick = __import__("random").Random(f"100:{ex['id']}").randrange(len(d))
            res.setdefault((task, k), []).append((spearman(w, d), d[top] - d[pick]))
for k in ("relayed", "direct", "inflow_unfolded", "origin", "self"):
    line = []
    allv = []
    for task in ("twohop","arith","vartrack","needle_multivalue"):
        v = res[(task, k)]; allv += v
        sp = [a for a, _ in v if a == a]; tr_ = [b for _, b in v]
        line.append(f"{task[:8]} rho {sum(sp)/len(sp):+.2f} top-rnd {sum(tr_)/len(tr_):+.2f}")
    sp = [a for a, _ in allv if a == a]; tr_ = [b for _, b in allv]
    print(f"{k:16s}", " | ".join(line), f"| ALL rho {sum(sp)/len(sp):+.3f} top-rnd {sum(tr_)/len(tr_):+.2f}", flush=True)
