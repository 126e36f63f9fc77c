"""Workflows around the pipeline: the offline demo (``demo``, ``synthetic``), hyperparameter sweeps
(``sweep``), merging and averaging checkpoints (``merge``), masked-LM SFT (``sft``), compute
accounting (``flops``)."""
