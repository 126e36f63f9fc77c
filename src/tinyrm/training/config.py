"""``TrainConfig``: every training option, for every objective (``tinyrm train`` flags map onto it), and
``TrainResult``, what a run reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..backbone import BackboneConfig
from ..prompt import DEFAULT_PREFIX
from ..truncation import DEFAULT_DIFF_CONTEXT, DEFAULT_TRUNCATION


@dataclass
class TrainConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    output: str = "runs/tinyrm"
    # "auto" (and every None below): chosen for the backbone and device by tinyrm.defaults.
    objective: str = "auto"  # auto | one of tinyrm.train.OBJECTIVES
    pooling: str = "auto"  # classifier objective: auto | cls | mean
    context: str = "prefix"  # process objective: prefix | full (see tinyrm.process.prompt)
    step_class_weight: str = "balanced"  # process/outcome: balanced | none | a float weight of the "incorrect" class
    prefix: str = DEFAULT_PREFIX
    # {"domain": prefix}: each row's `domain` picks its instruction; others use `prefix` (cloze objective).
    domain_prefixes: dict[str, str] | None = None
    template: str = "flan"
    answer_tokens: tuple[str, str] = ("0", "1")
    read: str = "auto"  # cloze: where the MLM head reads the answer, auto | mask | cls (RewardConfig.read)
    lr: float | None = None
    epochs: float = 1.0
    batch_size: int | None = None  # effective batch, reached by gradient accumulation
    micro_batch_size: int | None = None
    max_length: int | None = None
    # Cloze: how a pair longer than max_length is cut, ends | diff (tinyrm.truncation; saved in tinyrm.json).
    truncation: str = DEFAULT_TRUNCATION
    diff_context: int = DEFAULT_DIFF_CONTEXT  # diff: shared tokens kept around the differing span, at least
    max_steps: int = -1
    warmup_ratio: float = 0.05
    weight_decay: float = 1e-5
    max_grad_norm: float = 1.0
    dora_rank: int = 0
    dora_alpha: float | None = None
    dora_targets: list[str] | None = None
    freeze_layers: int = 0
    order: str = "both"  # both | random
    loss: str = "pair"  # pair | full-vocab
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 42
    save_steps: int = 50
    resume: bool = False
    skip_bad_rows: bool = False
    max_pairs: int = 0  # 0 = every pair; else a seeded sample with an equal share per domain
    # Held-out pairs scored during training (cloze): every eval_steps optimizer steps (0 = at the end only).
    eval_data: list[str] | None = None
    eval_steps: int = 0
    # Logging integrations of the HF Trainer (TrainingArguments.report_to): "none", "all", or names such as
    # "tensorboard" (loss, learning rate, --eval-data accuracy as curves; tinyrm.training.arguments.report_to).
    report_to: str | list[str] = "none"
    # Tokenised training data (Arrow, tinyrm.arrow): None = $TINYRM_DATASETS_CACHE or ~/.cache/tinyrm/datasets.
    cache_dir: str | None = None
    data_cache: bool = True  # False (--no-cache): tokenise into a temporary folder, removed after the run
    # Off by default: batches of similar length were measured to cost accuracy (demo 0.915 vs 0.9925
    # for cloze read at [CLS], docs/training.md); on for speed when padding dominates.
    group_by_length: bool = False
    # Both orders of a pair in the same batch (GroupedSampler); False shuffles every example on its own.
    pair_batches: bool = True
    # Learning-rate multiplier for parameters the checkpoint did not have (an initialised MLM head).
    head_lr_scale: float = 1.0
    # Remove length as a label cue: within each domain the chosen response is the longer one in half
    # of the pairs (tinyrm.data.length_balanced_indices), and every micro-batch holds one of each.
    # On by default: measured better on dev/hhh and held-out splits, 3 seeds (docs/training.md, "Length bias").
    length_balance: bool = True
    # How a batch reaches the model (tinyrm.training.packing): packed = one token stream with cumulative
    # lengths, no padding (inference.packed, varlen attention); padded = right-padded rows; auto = packed on
    # the CPU and on CUDA where torch's varlen_attn has a backward, padded elsewhere. A runtime choice, never saved.
    attention: str = "auto"
    # DoRA layers' forward (tinyrm.dora): fused = peft's function in two ops over the activations (1.4x a
    # CPU step, docs/training.md); peft = peft's own. A runtime choice, never saved.
    dora_forward: str = "fused"


# Options of how a run executes, not of what it trains: left out of the record saved in tinyrm.json.
RUNTIME_OPTIONS = frozenset({"attention", "report_to", "dora_forward"})


def backbone_config(config: TrainConfig) -> BackboneConfig:
    """The freezing and DoRA settings of ``config``, as ``prepare_for_training`` takes them."""
    return BackboneConfig(model=config.model, dora_rank=config.dora_rank, dora_alpha=config.dora_alpha,
                          dora_targets=config.dora_targets, freeze_layers=config.freeze_layers,
                          dora_forward=config.dora_forward)


def recorded_options(config: TrainConfig) -> dict:
    """``config`` as ``tinyrm.json`` records it (``extra.train``): every option but ``data`` (recorded on its
    own) and the runtime ones (``RUNTIME_OPTIONS``)."""
    return {k: v for k, v in asdict(config).items() if k != "data" and k not in RUNTIME_OPTIONS}


@dataclass
class TrainResult:
    output: str
    steps: int
    examples: int
    pairs: int
    seconds: float
    examples_per_second: float
    pairs_per_second: float
    trainable_parameters: int
    total_parameters: int
    truncated_examples: int
    skipped_rows: int
