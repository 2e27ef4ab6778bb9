"""``xmtf-train paper``: the paper's offline study (Tables 3 and 4) on the user simulator.

Every method is trained with ``trials`` seeds (training seed = trial index) in the same
simulated world (``PaperConfig.sim``, its item pool fixed by ``sim.seed``) and evaluated on the
same users (``evaluate(..., seed=train.eval_seed)``). The metric is the total watch time per
session; a method's row is the mean ± sample std over its seeds of the per-seed mean over the
evaluation sessions, plus the mean session length. The RL methods share one actor/critic
architecture and one set of RL hyper-parameters (:class:`TSHConfig`) and one budget
(:class:`TrainConfig`: collection steps x users, updates per step). See
:mod:`trainer.study.methods` for the design of each baseline.

Outputs in ``--out``: ``paper.json`` (everything, including per-seed results and training
curves), ``paper.md`` (the tables, rendered from the JSON) and ``checkpoints/`` (the first
seed's model of each method, for ``xmtf-train plot``).

Layout: ``registry`` (the methods) -> ``config`` (PaperConfig) -> ``runner`` (one method and
seed: train, evaluate) -> ``budget`` (projected run time) -> ``run`` (every method and seed,
in parallel workers, into paper.json) -> ``report`` (tables and verdict, paper.md) ->
``plots`` (figures). The baselines and ablations live in ``methods/``.
"""
