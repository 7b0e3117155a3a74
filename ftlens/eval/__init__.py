"""The evaluation harness: everything the scripts in ``analyses/`` measure ftlens with.

- :mod:`~ftlens.eval.tasks`: generated tasks with known evidence (fixed seeds, a tokenizer only);
- :mod:`~ftlens.eval.cases`: one example laid on the model's token sequence (:class:`Case`);
- :mod:`~ftlens.eval.loading`: the model an analysis runs on (``"tiny"`` for smoke runs);
- :mod:`~ftlens.eval.metrics`: faithfulness metrics on curves (RISE, MAS, insertion, Recovery);
- :mod:`~ftlens.eval.scoring`: the model side of the metrics (perturbed log-probs, :class:`Scorer`);
- :mod:`~ftlens.eval.baselines`: other attribution methods, and ftlens' own, as ``[pos]`` scores;
- :mod:`~ftlens.eval.reference`: the reference package ``flashtrace`` in the same form;
- :mod:`~ftlens.eval.scaffold`: what every analysis script shares (flags, the command record,
  summaries, CSV / markdown / figure writing).

Nothing here is imported by the engine or by ``import ftlens``; import the submodules directly.
"""
