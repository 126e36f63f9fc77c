"""tinyrm where reward models are used by other libraries (docs/integrations.md).

``tinyrm.integrations.trl``: ``PairwiseReward``, a pairwise model as a reward function for TRL's
GRPO / RLOO / online DPO trainers. Nothing here imports the other library: the submodules are
imported on demand and need only their own optional extra (``tinyrm[trl]``) where they use it.
"""
