"""ftlens' one axis vocabulary: every tensor shape in a signature uses these names.

jaxtyping checks the shapes at run time in the test suite (``pytest
--jaxtyping-packages=ftlens,beartype.beartype``, set in pyproject.toml), and
``tests/test_axes.py`` checks that no annotation uses a name outside this table.
"""

from __future__ import annotations

#: axis name -> what it indexes
AXES: dict[str, str] = {
    "pos": "every position of the formatted prompt + target (a Trace's tokens)",
    "src": "source positions (keys) a query attends to; the same positions as pos",
    "row": "tracked target rows (positions from the prompt's end), or a chosen subset of them",
    "prompt": "the user prompt's positions only",
    "tok": "the target span's tokens in residual-stream analyses (logit read at t - 1)",
    "layer": "transformer blocks",
    "head": "query heads",
    "kv": "key/value heads (grouped-query attention: head h reads kv h // (head / kv))",
    "d": "the residual stream (d_model)",
    "dh": "one head's query/key/value channels (d_head)",
    "hop": "recursion hops (hop 0 explains the output span)",
    "vec": "a batch of virtual targets (weight vectors over rows; a step graph's traced nodes)",
    "channel": "the channels of a multi-channel token view",
    "step": "points of a deletion/insertion curve (0 .. k groups deleted)",
    "node": "nodes of a step graph: input segments, reasoning steps, the answer",
    "vocab": "the model's vocabulary (logits)",
    "batch": "perturbed copies of one sequence scored together (faithfulness metrics)",
    "top": "the highest-scored positions kept by a ranking metric (the top pct% of prompt positions)",
}
#: Fixed sizes (``"batch 2"``) are numbers, not names, and need no entry.
