"""Can the default model re-generate a chain after a step is deleted?  (Exploration, 2026-11-26.)

Run: ``.venv/bin/python notes/regenerate_probe.py``.  One held-out example per step_causal task
(seed 100): for every reasoning step, greedy continuations after the step, with the step kept
and with it replaced by ``_``.  Seen: SmolLM2-135M's continuations of the *unchanged* prefix
write neither the rest of the chain nor ``</think>`` (``<|im_end|>`` repeated on twohop,
distractor sentences on arith and needles, ``ED9 = ED9`` loops on vartrack) and the deleted
prefix makes it write ``_``: a regenerate-after-deletion check is not meaningful with this model.
"""
import torch, time
torch.set_num_threads(2)
import ftlens
from ftlens.eval.tasks import make_examples
from ftlens.eval.cases import build_case
from ftlens.bridge import hf_model
from ftlens.stepgraph import step_graph
m = ftlens.load_model(); tok = m.tokenizer; hf = hf_model(m)
for task, L in (("twohop",128),("arith",128),("vartrack",128),("needle_multivalue",256)):
    ex = make_examples(task, tok, 1, L, seed=100)[0]
    seq, case, _ = build_case(m, ex)
    r0, r1 = seq.reasoning; o0, o1 = seq.output
    print("====", task, "between:", [tok.decode([i]) for i in seq.ids[r1:o0].tolist()], "answer:", repr(tok.decode(seq.ids[o0:o1])))
    g = step_graph(m, ex["prompt"], ex["target"])
    steps = [(g.nodes[i].start, g.nodes[i].end) for i in g.steps if r0 <= g.nodes[i].start and g.nodes[i].end <= r1]
    for a, b in steps:
        x = seq.ids[:b].clone(); y = x.clone(); y[a:b] = 79
        t = time.perf_counter()
        out = hf.generate(torch.stack([x, y]), attention_mask=torch.ones(2, b, dtype=torch.long), max_new_tokens=(r1-b)+20, do_sample=False, pad_token_id=tok.eos_token_id)
        print(f"step {tok.decode(seq.ids[a:b])!r} gold rest {tok.decode(seq.ids[b:r1])!r}  {time.perf_counter()-t:.2f}s")
        print("   clean:", repr(tok.decode(out[0, b:])))
        print("   del  :", repr(tok.decode(out[1, b:])))
