"""``ProcessRewardModel``: a cloze model that judges solution steps (``score_steps``, ``score_solution``,
``rerank``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..backbone import default_device, load_saved_backbone, resolve_model_path
from ..config import CONFIG_FILE, RewardConfig
from ..inference.precision import apply_precision, check_precision
from ..pairwise.model import RewardModel
from .prompt import CONTEXTS, OBJECTIVES, StepEncoded, StepsInput
from .scoring import ProcessSpec, rerank, score_many, score_solution, score_steps, verdicts
from .scoring import spec as process_spec


class ProcessRewardModel(RewardModel):
    """A process (per-step) or outcome (per-solution) reward model.

    Loaded from a ``--objective process|outcome`` folder; from a pairwise folder or a plain masked LM
    it judges steps zero-shot with the untrained process prompt. The pairwise methods it inherits
    score with the saved prompt as they would on any cloze model.
    """

    @classmethod
    def from_pretrained(cls, path_or_id: str = "default", device: str | None = None, precision: str | None = None,
                        **overrides) -> ProcessRewardModel:
        """Overrides: ``max_length``, ``prefix``, ``context`` (prefix | full); ``None`` values are ignored.
        ``precision`` (auto | bf16 | fp32 | int8) sets ``engine.config.precision``, which step verdicts run at
        (``RewardModel.from_pretrained``'s)."""
        check_precision(precision, device or default_device())
        return apply_precision(cls._from_folder(path_or_id, device, overrides), precision)

    @classmethod
    def _from_folder(cls, path_or_id: str, device: str | None, overrides: dict) -> ProcessRewardModel:
        path = resolve_model_path(path_or_id)
        saved = (Path(path) / CONFIG_FILE).is_file()
        config = RewardConfig.load(path) if saved else RewardConfig(base_model=str(path_or_id or "default"))
        if config.objective == "cloze":  # zero-shot: the process prompt; its context and prefix as given
            process = {k: overrides.pop(k) for k in ("context", "prefix") if overrides.get(k) is not None}
            if process.get("context", CONTEXTS[0]) not in CONTEXTS:
                raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {process['context']!r}")
            rm = cls._load_cloze(path, config, str(path_or_id), device, overrides)
            rm.config.extra.setdefault("process", {}).update(process)
            return rm
        if config.objective not in OBJECTIVES:
            raise ValueError(f"{path}: a {config.objective!r} model does not judge steps; load it with tinyrm.load")
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "context":
                if value not in CONTEXTS:
                    raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {value!r}")
                config.extra.setdefault("process", {})["context"] = value
            elif key in ("max_length", "prefix", "both_orders"):
                setattr(config, key, value)
            elif key == "template":
                raise ValueError("process and outcome models keep their saved template")
            else:
                raise TypeError(f"unknown option {key!r} for a {config.objective} model")
        tokenizer, mlm = load_saved_backbone(path, config.adapter)
        rm = cls(mlm, tokenizer, config, device=device)
        rm.name = str(path)
        return rm

    @property
    def spec(self) -> ProcessSpec:
        """Step template, encoder, answer ids, objective and context mode (rebuilt if the config changes)."""
        return process_spec(self)

    def verdicts(self, encodings: Sequence[StepEncoded], batch_size: int = 32,
                 calibrated: bool | None = None) -> list[list[float]]:
        """P(step correct) at each read mask of each sequence (``tinyrm.process.scoring.verdicts``; what the
        server's step calls run)."""
        return verdicts(self, encodings, batch_size=batch_size, calibrated=calibrated)

    # ``calibrated``: with a temperature from ``tinyrm calibrate``, every step probability (and so every
    # aggregate) is sigmoid(logit(P) / T); False (or ``self.calibrated = False``) gives the raw P.
    def score_many(self, items: Sequence[tuple[str, StepsInput]], context: str | None = None,
                   batch_size: int = 32, calibrated: bool | None = None) -> list[list[float]]:
        """P(step correct) for every step of every (problem, steps), in one batched run."""
        return score_many(self, items, context=context, batch_size=batch_size, calibrated=calibrated)

    def score_steps(self, problem: str, steps: StepsInput, context: str | None = None,
                    batch_size: int = 32, calibrated: bool | None = None) -> list[float]:
        """P(step correct) per step; ``context`` ``prefix`` or ``full`` (default: the model's)."""
        return score_steps(self, problem, steps, context=context, batch_size=batch_size, calibrated=calibrated)

    def score_solution(self, problem: str, steps: StepsInput, aggregate: str = "min",
                       context: str | None = None, threshold: float = 0.5, calibrated: bool | None = None) -> float:
        """One reward: step scores combined by ``tinyrm.process.aggregate.aggregate`` (an ORM's own verdict)."""
        return score_solution(self, problem, steps, aggregate=aggregate, context=context, threshold=threshold,
                              calibrated=calibrated)

    def rerank(self, problem: str, candidates: Sequence[StepsInput], aggregate: str = "min",
               context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
               calibrated: bool | None = None) -> list[tuple[int, float]]:
        """``[(index, score), ...]`` best first over candidate solutions (step lists or texts); ``threshold``:
        ``first_error``'s."""
        return rerank(self, problem, candidates, aggregate=aggregate, context=context, threshold=threshold,
                      batch_size=batch_size, calibrated=calibrated)
