"""The pairwise reward model: a masked LM read at the cloze answer slot.

``RewardModel`` is the public API (``from_pretrained``, ``compare``, ``compare_batch``, ``rank``,
``save_pretrained``); ``ClozeScorer`` is the ``nn.Module`` the trainer optimises. Process rewards
are :class:`tinyrm.process.model.ProcessRewardModel`, a subclass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import (
    base_state_dict,
    check_max_length,
    default_device,
    load_saved_backbone,
    mask_logits,
    read_positions,
    resolve_model_path,
    unwrap_peft,
)
from ..config import ADAPTER_DIR, CONFIG_FILE, RewardConfig, check_read, model_class, saved_objective
from ..inference.adaptive import resolve_both_orders
from ..inference.engine import CachingClozeEncoder, InferenceEngine
from ..inference.packed import packed_mask_logits
from ..inference.precision import apply_precision, check_precision
from ..inference.varlen import Packed
from ..model_card import write_card
from ..prompt import ClozeEncoder, Encoded, get_template, resolve_answer_ids
from ..temperature import calibrate_output
from .rank import best_of_n, rank

PairInput = tuple[str, str, str]


class ClozeScorer(nn.Module):
    """Wraps the (possibly DoRA-adapted) MLM; forward returns the two answer logits and a loss."""

    def __init__(self, mlm: nn.Module, answer_ids: Sequence[int], loss: str = "pair", read: str = "mask") -> None:
        super().__init__()
        if loss not in ("pair", "full-vocab"):
            raise ValueError(f"loss must be 'pair' or 'full-vocab', got {loss!r}")
        check_read(read)
        self.mlm = mlm
        self.loss_kind = loss
        self.read = read
        self.register_buffer("answer_ids", torch.tensor(list(answer_ids)), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_rows: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        seq_lengths: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``mask_rows`` (with flattened ``mask_positions``) reads several masks per row (process rewards).
        With ``cu_seqlens`` the batch is packed (``ClozeCollator(packed=True)``, ``Packed.inputs``): one token
        stream, ``mask_positions`` in it, and the packed forward runs (``inference.packed``)."""
        full_vocab = self.loss_kind == "full-vocab" and labels is not None
        logits = self.read_logits(input_ids, attention_mask, mask_positions, token_type_ids, mask_rows, position_ids,
                                  cu_seqlens, max_seqlen, seq_lengths, full_vocab=full_vocab)
        out: dict[str, torch.Tensor] = {}
        if full_vocab:
            # The paper's objective: cross-entropy over the whole vocabulary at the mask.
            out["loss"] = F.cross_entropy(logits.float(), self.answer_ids[labels])
            logits = logits[:, self.answer_ids]
        elif labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels)
        out["logits"] = logits
        return out

    def read_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    mask_positions: torch.Tensor | None, token_type_ids: torch.Tensor | None = None,
                    mask_rows: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                    cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                    seq_lengths: Sequence[int] | None = None, full_vocab: bool = False) -> torch.Tensor:
        """The logits at every read position (the answer ids' or, ``full_vocab``, the whole vocabulary's), from
        padded rows or a packed stream (``cu_seqlens``); [CLS] where ``read`` is cls."""
        backbone = unwrap_peft(self.mlm)
        token_ids = None if full_vocab else self.answer_ids
        if cu_seqlens is not None:
            packed = Packed.from_inputs(input_ids, position_ids, cu_seqlens, max_seqlen, seq_lengths, mask_positions,
                                        token_type_ids)
            return packed_mask_logits(backbone, packed, token_ids, packed.starts if self.read == "cls" else None)
        # One read per row at [CLS] for a cls model (with mask_rows: prefix-mode process rows).
        return mask_logits(backbone, input_ids, attention_mask, read_positions(self.read, mask_positions),
                           token_ids=token_ids, token_type_ids=token_type_ids, mask_rows=mask_rows)


class RewardModel:
    """A pairwise reward model. ``compare(prompt, a, b)`` returns P(a is better than b).

    >>> rm = RewardModel.from_pretrained("default")
    >>> rm.compare("What is 2 + 2?", "4", "5")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, tokenizer, config: RewardConfig, device: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device) if device else default_device()
        check_max_length(model, config.max_length, config.base_model or "model")
        self.model.to(self.device).eval()
        # Tokenises each distinct text once (prompts repeat; both orders reuse every text).
        self.encoder: ClozeEncoder = CachingClozeEncoder(
            tokenizer, get_template(config.template), prefix=config.prefix, max_length=config.max_length,
            truncation=config.truncation, diff_context=config.diff_context,  # the rule it was trained with
        )
        self.answer_ids = resolve_answer_ids(tokenizer, config.answer_tokens)
        self._answer_ids_t = torch.tensor(self.answer_ids, device=self.device)
        self.name = config.base_model or "unknown"
        # False: every probability is the raw one even where tinyrm.json holds a temperature (tinyrm.temperature).
        self.calibrated = True
        # Scoring machinery (token-budget batches, bf16, ...); settings in ``self.engine.config``.
        self.engine = InferenceEngine(self)

    def follow_weights(self) -> None:
        """Score where the weights are now: ``device`` follows the model's parameters, which a Trainer moves
        (to the GPU) after the model was built on the CPU (``--eval-data`` scores the live weights)."""
        param = next(self.model.parameters(), None)
        if param is not None and param.device != self.device:
            self.device = param.device
            self._answer_ids_t = self._answer_ids_t.to(self.device)

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path_or_id: str = "default", device: str | None = None, precision: str | None = None,
                        **overrides) -> RewardModel:
        """Load a saved tinyrm model, or wrap any masked-LM checkpoint (``default`` = embedded).

        A folder of another kind (``tinyrm.json`` objective other than ``cloze``) loads as that kind's
        class, as :func:`tinyrm.load` does: e.g. a process checkpoint gives a ``ProcessRewardModel``.
        ``precision`` (auto | bf16 | fp32 | int8) sets ``engine.config.precision``; int8 is CPU only
        (``tinyrm.inference.quantize``) and is refused for a CUDA device before anything is loaded.
        """
        check_precision(precision, device or default_device())
        path = resolve_model_path(path_or_id)
        saved = (Path(path) / CONFIG_FILE).is_file()
        config = RewardConfig.load(path) if saved else RewardConfig(base_model=str(path_or_id or "default"))
        objective = config.objective if saved else saved_objective(path)  # a one-label classifier is a baseline
        if objective != "cloze":
            return apply_precision(model_class(objective).from_pretrained(path, device=device, **overrides),
                                   precision)
        return apply_precision(cls._load_cloze(path, config, str(path_or_id), device, overrides), precision)

    @classmethod
    def _load_cloze(cls, path: str, config: RewardConfig, name: str, device: str | None, overrides: dict):
        """A cloze folder (or plain masked LM) as ``cls``, with ``RewardConfig`` fields overridden."""
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in RewardConfig.__dataclass_fields__:
                raise TypeError(f"unknown option {key!r} for RewardModel.from_pretrained")
            if key == "template":  # a template name ("tinyrm" for published TinyRM checkpoints) or dict
                value = get_template(value).to_dict()
            setattr(config, key, list(value) if key == "answer_tokens" else value)
        tokenizer, mlm = load_saved_backbone(path, config.adapter)
        rm = cls(mlm, tokenizer, config, device=device)
        rm.name = name
        return rm

    def save_pretrained(self, directory: str | Path) -> None:
        """HF-native backbone weights + tokenizer + ``tinyrm.json`` (+ ``adapter/`` for DoRA)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone = unwrap_peft(self.model)
        is_peft = backbone is not self.model
        if is_peft:
            # Base weights without adapters, so the folder loads as a plain MLM too; the adapter
            # lives in a subfolder so transformers does not redirect to the adapter's base model.
            backbone.save_pretrained(directory, state_dict=base_state_dict(self.model))
            self.model.save_pretrained(directory / ADAPTER_DIR)
            self.config.adapter = ADAPTER_DIR
        else:
            backbone.save_pretrained(directory)
            self.config.adapter = None
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)
        write_card(directory, self.config)  # README.md: what the model is, how it was trained, how to use it

    # ----------------------------------------------------------------- scoring
    def encode(self, prompt: str, a: str, b: str, domain: str | None = None) -> Encoded:
        """The cloze input of one order; ``domain`` picks the instruction (see ``RewardConfig.prefix_for``)."""
        return self.encoder.encode(prompt, a, b, prefix=None if domain is None else self.config.prefix_for(domain))

    def choice_probs(
        self, encodings: Sequence[Encoded], batch_size: int | None = 32, max_batch_tokens: int | None = None
    ) -> list[float]:
        """P(choice 0 is better) for each encoding, in input order.

        Batches are formed after sorting by length, at most ``batch_size`` rows and
        ``max_batch_tokens`` padded tokens each (default ``self.engine.config.max_batch_tokens``).
        """
        return self.engine.choice_probs(encodings, batch_size=batch_size, max_batch_tokens=max_batch_tokens)

    def compare_batch(
        self, items: Iterable[PairInput], batch_size: int | None = 32, both_orders: bool | str | None = None,
        max_batch_tokens: int | None = None, domains: Sequence[str | None] | None = None,
        order_margin: float | None = None, calibrated: bool | None = None,
    ) -> list[float]:
        """P(a better than b) for each (prompt, a, b); averaged over both orders by default.

        A model calibrated by ``tinyrm calibrate`` returns ``sigmoid(logit(P) / T)`` of that P (the same
        decisions); ``calibrated=False`` (or ``self.calibrated = False``) returns the raw P.

        Both orders of a pair run in the same batch; see ``choice_probs`` for the batch limits.
        ``both_orders="auto"``: the swapped order only for pairs whose first P is within
        ``order_margin`` (default 0.25) of 0.5 (``tinyrm.inference.adaptive``; counts in ``engine.order_stats``).
        ``domains`` (one per item, None allowed): with ``config.domain_prefixes`` set, each item is
        encoded with its domain's prefix; items without a domain, or of an unmapped one, with ``prefix``.
        """
        both = resolve_both_orders(both_orders, self.config.both_orders, order_margin)
        items = list(items)
        if domains is not None:
            if isinstance(domains, str):  # one domain per item: "code" would be four
                raise TypeError(f"domains must be a list (one per pair), got the str {domains!r}")
            domains = list(domains)
            if len(domains) != len(items):
                raise ValueError(f"got {len(domains)} domains for {len(items)} pairs")
            for i, domain in enumerate(domains):
                if domain is not None and not isinstance(domain, str):
                    raise TypeError(f"domains[{i}] must be a str or None, got {type(domain).__name__}")
        probs = self.engine.compare_batch(items, both, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                          prefixes=self.config.prefixes_for(domains))
        return calibrate_output(self, probs, calibrated)

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | str | None = None,
                domain: str | None = None, order_margin: float | None = None, calibrated: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)], both_orders=both_orders, domains=[domain],
                                  order_margin=order_margin, calibrated=calibrated)[0]

    def scorer(self, loss: str = "pair") -> ClozeScorer:
        """The trainable module around this model's backbone."""
        return ClozeScorer(self.model, self.answer_ids, loss=loss, read=self.config.read)

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "knockout",
             batch_size: int = 32) -> list[tuple[int, float]]:
        """``[(index, score), ...]`` best first; ``method`` is ``knockout`` or ``round_robin`` (see
        tinyrm.pairwise.rank)."""
        return rank(self, prompt, candidates, method=method, batch_size=batch_size)

    def best_of_n(self, prompt: str, candidates: Sequence[str], **kw) -> int:
        """Index of the best candidate (``method=``, ``batch_size=`` as for ``rank``)."""
        return best_of_n(self, prompt, candidates, **kw)
