"""The conventional ways of turning an encoder into a reward model, trained by the same Trainer.

Both objectives score each response on its own, as TRL's RewardTrainer and official RewardBench do:
the encoder reads ``[CLS] prompt [SEP] response [SEP]`` (prompt cut from its start, response in the
middle when too long) and ``P(a better than b) = sigmoid(r(a) - r(b))``, so the order of the two
responses never matters.

- ``classifier``: a scalar head on a pooled state (``cls``: the first token; ``mean``: the mean over
  all tokens), trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``.
- ``token``: token-level classification. A one-logit head on every response token is trained with
  binary cross-entropy towards "this token belongs to the chosen response" (1 for every token of the
  chosen response, 0 for every token of the rejected one; each response's tokens averaged, then the
  responses). A response's score is the **mean over its tokens of that per-token logit** (the
  log-odds of "chosen"); prompt and special tokens are not scored.

Saved folders (all with ``tinyrm.json``, ``objective`` set, so ``tinyrm.load`` gives a
``BaselineRewardModel``, and a ``README.md`` model card):

- ``classifier`` where the architecture's own sequence-classification head does the pooling asked
  for (``cls`` on any architecture: BERT's pooler dense + tanh over ``[CLS]`` then a linear layer,
  RoBERTa's dense + tanh + projection, ...; ``cls`` or ``mean`` on ModernBERT through its
  ``classifier_pooling``): the model *is* an ``AutoModelForSequenceClassification`` with one label
  (the reward), trained as such and saved as a standard checkpoint (DoRA merged into the weights) that
  ``AutoModelForSequenceClassification.from_pretrained``, ``pipeline("text-classification")`` and
  RewardBench's ``run_rm.py`` load without tinyrm and score exactly as tinyrm does. Its tokenizer is
  saved without segment (token type) ids, so the text pair ``(prompt, response)`` and the single
  string ``prompt + "[SEP]" + response`` (what its chat template renders) are the same input.
- ``classifier`` with ``mean`` pooling on the BERT family (no transformers head averages tokens) and
  ``token``: the backbone as a plain masked LM (plus ``adapter/`` under DoRA) and tinyrm's head in
  ``head.safetensors``; these need tinyrm to load.
"""
