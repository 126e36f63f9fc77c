"""Training shared by every kind: ``TrainConfig`` (``config``), ``GroupedSampler`` (``sampler``), the
``TrainingArguments`` (``arguments``), the Trainer with its callbacks and ``fit`` (``trainer``), and the
paper's recipes (``recipes``). Each kind brings its model, dataset and collator; ``tinyrm.train``
picks the kind."""
