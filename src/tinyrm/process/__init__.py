"""Process (per-step) and outcome (per-solution) rewards with the same cloze machinery.

``ProcessRewardModel`` (:mod:`.model`) scores; the prompt (:mod:`.prompt`), rows (:mod:`.data`), scoring
(:mod:`.scoring`), training (:mod:`.train`) and metrics (:mod:`.evaluation`) each have a module;
:mod:`.steps` splits a written solution and :mod:`.aggregate` combines step scores.

A step verdict is read at one mask: ``[CLS] <instruction> <problem> [SEP] <steps so far> Is the
last step correct? [MASK] [SEP]``, P(step correct) = softmax over the answer tokens (``yes`` /
``no`` by default, resolved like the pairwise ones). Context modes:

- ``prefix``: step k is judged from steps 1..k only; one sequence per step (batched). Scores never
  depend on later steps, which is what step-guided search needs.
- ``full``: every step is followed by its own verdict question and mask in one sequence over the
  whole solution: one pass instead of n, but each verdict also sees the later steps.

The outcome objective (ORM) asks ``Is the solution correct? [MASK]`` once after the last step.
Truncation never cuts the mask or the judged step: the oldest steps go first (an elision marker
shows where), then the problem is shortened; the judged step is cut only if it alone cannot fit.

Training weights the cross-entropy of each verdict by its class (``TrainConfig.step_class_weight``):
``balanced`` (default) gives each class the same total weight, ``n / (2 * n_class)`` from the
training labels, because incorrect steps are rare (about 1 in 10 in MR-GSM8K) and an unweighted
model learns to answer "correct" everywhere; ``none`` is the plain mean; a number weights the
incorrect class (correct = 1). The weights used are saved in ``tinyrm.json`` (``extra``).
"""

from .aggregate import METHODS
from .data import ProcessReport, ProcessRow, load_rows, parse_row, question_key, split_questions, write_rows
from .evaluation import ProcessEvalConfig, auroc, binary_metrics, evaluate, step_metrics
from .model import ProcessRewardModel
from .prompt import CONTEXTS, OBJECTIVES, STEP_TEMPLATES, StepEncoder, StepTemplate, collate
from .scoring import (
    StepBatch,
    encode_many,
    outcome_scores,
    score_many,
    solution_reward,
    solution_scores,
    spec,
    steps_and_reward,
)
from .steps import clean, split
from .train import ProcessCollator, ProcessDataset, WeightedClozeScorer, class_weights, parse_class_weight, process_read

__all__ = [
    "CONTEXTS", "METHODS", "OBJECTIVES", "STEP_TEMPLATES", "ProcessCollator", "ProcessDataset", "ProcessEvalConfig",
    "ProcessReport", "ProcessRewardModel", "ProcessRow", "StepBatch", "StepEncoder", "StepTemplate",
    "WeightedClozeScorer", "auroc", "binary_metrics", "class_weights", "clean", "collate", "encode_many",
    "evaluate", "load_rows", "outcome_scores", "parse_class_weight", "parse_row", "process_read", "question_key",
    "score_many", "solution_reward", "solution_scores", "spec", "split", "split_questions", "step_metrics",
    "steps_and_reward", "write_rows",
]
