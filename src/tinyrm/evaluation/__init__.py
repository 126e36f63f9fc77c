"""Evaluation of pairwise scorers: accuracy overall and per subset/domain (``evaluate``, ``results``),
RewardBench's categories (``rewardbench``) and the length/random references (``heuristics``).
Process metrics live with their kind (``tinyrm.process.evaluation``)."""
