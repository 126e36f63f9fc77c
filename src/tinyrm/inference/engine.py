"""Fast scoring: length-sorted token-budget batches, bf16 where the hardware has it, cached tokens.

``RewardModel.compare_batch`` / ``choice_probs`` delegate here. What makes it fast, in order of
effect on CPU (see ``benchmarks/inference.py``):

* logits only at the mask, and only for the two answer tokens (``backbone.mask_logits``);
* bf16 weights on CPUs with native bf16 (``avx512_bf16`` / AMX) and on GPUs that support it:
  a private bf16 copy of the model, rebuilt when the weights change (autocast re-casts weights on
  every call and was measured at half the speed);
* batches formed after sorting by encoded length under a padded-token budget, so padding is a few
  percent of the work; results come back in input order; both orders of a pair share a batch;
* tokenisation once per unique text (prompts repeat across pairs, and every text twice for the
  swapped order), batch-tokenised up front with the whole-pair encodings, and on GPU built ahead by the
  host pipeline (``inference.pipeline``: worker threads tokenise, plan, collate or pack into pinned
  memory; the main thread only copies, runs and reads back once per chunk);
* with ``attention`` packed (auto: on CUDA where ``varlen_attn`` runs, and on the CPU except int8), no
  padding at all: the batch's sequences in one token stream (``inference.packed``), batches planned by
  real tokens.

Which dtype ``precision`` means on a device is ``inference.precision``; int8 (CPU, opt-in) is
``inference.quantize``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbone import mask_logits, read_positions, unwrap_peft
from ..prompt import Encoded
from .adaptive import AutoOrder, OrderStats
from .batches import HostBatch, host_batches, pair_scores, pair_units, plan_batches  # noqa: F401 (plan_batches: re-exported)
from .budget import default_batch_tokens
from .packed import check_attention, enable_flash_attention, packed_mask_logits, packed_mlm_supported, use_packed
from .pipeline import gc_paused, run_pipeline
from .precision import PRECISIONS, resolve_dtype
from .quantize import INT8_DTYPE, check_scheme, quantize_encoder_
from .tokens import CachingClozeEncoder, PairInput, check_pairs
from .varlen import flash_varlen_available

logger = logging.getLogger(__name__)
__all__ = ["CachingClozeEncoder", "InferenceConfig", "InferenceEngine", "PairInput", "pair_units"]


@dataclass
class InferenceConfig:
    """Knobs of the scoring path; ``rm.engine.config`` holds the live one."""

    # Tokens per forward pass: padded (rows x width), or real ones when packed. auto = sized to the device
    # (inference.budget.default_batch_tokens: 16,384 off CUDA; on CUDA from the memory free to this process,
    # 16,384 to 262,144); None = no token limit (rows only).
    max_batch_tokens: int | str | None = "auto"
    precision: str = "auto"  # auto = bf16 where the device has native bf16, else fp32; int8 (CPU): inference.quantize
    # torch.compile: the packed forward's layer regions (inference.packed), the padded forward whole; off by
    # default: a one-time compile per model shape and dtype (docs/inference.md has the CPU figures)
    compile: bool = False
    overlap: str = "auto"  # the host pipeline (inference.pipeline): chunks built ahead in threads; auto = on GPU
    chunk_pairs: int = 2048  # pairs per pipeline chunk when overlapping
    host_workers: int = 0  # pipeline threads building chunks ahead; 0 = auto (CUDA: cores / 4, at most 4; else 1)
    cache_size: int = 50_000  # distinct texts kept by the token cache
    # Python's cyclic garbage collector paused during compare_batch (inference.pipeline.gc_paused): the host's
    # lists and rows are acyclic, and its collections were 15-35% of the host's time under the GIL.
    pause_gc: bool = True
    # Accuracy guard for bf16: pairs whose bf16 P(a better) is within this margin of 0.5 are
    # re-scored in fp32, so near-ties get the fp32 decision (0 = off; see docs/inference.md).
    # On by default: bf16 rounding turned a barely-trained model's small margins into exact ties
    # (counted wrong) and flipped 5% of dev decisions; a trained model rarely triggers it.
    recheck_margin: float = 0.01
    int8_scheme: str = "dynamic"  # precision int8: dynamic (torch.ao) | per-token (inference.quantize)
    # auto | packed | padded: packed = no padding, varlen attention (inference.packed); auto = packed where
    # torch's varlen_attn runs (CUDA) and on the CPU except int8, padded elsewhere (docs/inference.md).
    attention: str = "auto"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every field valid; run at construction and on each scoring call, so a value set later on a loaded
        model (``rm.engine.config.precision = "float32"``) fails instead of silently meaning ``auto``."""
        check_attention(self.attention)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_scheme(self.int8_scheme)
        if self.overlap not in ("auto", "on", "off"):
            raise ValueError(f"overlap must be auto, on or off, got {self.overlap!r}")
        tokens = self.max_batch_tokens
        if tokens != "auto" and tokens is not None and (isinstance(tokens, str) or tokens < 1):
            raise ValueError(f"max_batch_tokens must be 'auto', None or >= 1, got {tokens!r}")
        if self.host_workers < 0 or self.chunk_pairs < 1 or self.cache_size < 1:
            raise ValueError(f"host_workers must be >= 0, chunk_pairs and cache_size >= 1, got {self.host_workers}, "
                             f"{self.chunk_pairs}, {self.cache_size}")


# ----------------------------------------------------------------------------- engine
@dataclass
class _Prepared:
    key: tuple
    model: nn.Module
    forward: Callable[..., torch.Tensor]
    dtype: torch.dtype
    packed: Callable[..., torch.Tensor] | None = None  # the packed forward (None: not packable)


def _weights_key(model: nn.Module, dtype: torch.dtype, compile_: bool) -> tuple:
    """Changes whenever a parameter is updated in place (optimizer steps and ``load_state_dict`` bump
    ``_version``) or replaced (new storage)."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    return (id(model), str(device), dtype, compile_, model.training, tuple((p.data_ptr(), p._version) for p in params))


@dataclass
class InferenceEngine:
    """Scores cloze encodings for one ``RewardModel`` (reads its model/tokenizer/device live)."""

    rm: object
    config: InferenceConfig = field(default_factory=InferenceConfig)
    _slots: dict = field(default_factory=dict, init=False, repr=False)  # dtype -> _Prepared
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    rechecked: int = field(default=0, init=False)  # pairs re-scored in fp32 by the recheck_margin guard
    order_stats: OrderStats = field(default_factory=OrderStats, init=False)  # both_orders="auto" (inference.adaptive)

    # -- model preparation
    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.config.precision, self.rm.device)

    def prepared(self, dtype: torch.dtype | None = None) -> _Prepared:
        """The module to run: the model itself in fp32 eval mode, else a private eval copy
        (adapters merged, cast to bf16, compiled if asked); rebuilt when the weights change."""
        self.config.check()
        model, dtype = self.rm.model, dtype or self.dtype
        key = (*_weights_key(model, dtype, self.config.compile), getattr(self.rm.config, "read", "mask"),
               self.config.int8_scheme if dtype == INT8_DTYPE else None)
        with self._lock:
            cached = self._slots.get(dtype)
            if cached is not None and cached.key == key:
                return cached
            backbone = unwrap_peft(model)
            needs_copy = dtype != torch.float32 or backbone is not model or model.training
            if needs_copy:
                # Ordinary tensors, frozen, whether the first caller is in inference mode or not: a copy made of
                # inference tensors would fail outside it, and compiled regions guard on the kind of tensor, so
                # the two kinds would compile the same graphs twice.
                with torch.inference_mode(False):
                    run = copy.deepcopy(model)
                    if backbone is not model:
                        # Merging DoRA/LoRA adapters removes their per-call overhead.
                        run = run.merge_and_unload()
                    if dtype == INT8_DTYPE:  # int8: quantised encoder linears, fp32 elsewhere
                        run = quantize_encoder_(run, self.config.int8_scheme)
                    else:
                        run = run.to(dtype=dtype).eval()
                    run.requires_grad_(False)
            else:
                run = model
            enable_flash_attention(run, self.rm.device)
            answer_ids = self.rm._answer_ids_t
            read = getattr(self.rm.config, "read", "mask")

            def forward(input_ids, attention_mask, mask_positions, token_type_ids=None):
                return mask_logits(run, input_ids, attention_mask, read_positions(read, mask_positions),
                                   token_ids=answer_ids, token_type_ids=token_type_ids)

            packed = None
            # compile: the packed forward's layer regions (inference.packed; not over int8's quantised linears)
            regions = self.config.compile and dtype != INT8_DTYPE
            if packed_mlm_supported(run):
                def packed(batch):  # the same logits from a packed batch (inference.packed)
                    reads = batch.starts if read == "cls" else batch.mask_index
                    return packed_mask_logits(run, batch, answer_ids, reads, compiled=regions)

            if self.config.compile:  # the padded forward: the whole model, dynamic in batch and width
                forward = torch.compile(forward, dynamic=True)
            self._slots[dtype] = _Prepared(key, run, forward, dtype, packed)
            return self._slots[dtype]

    def release(self) -> None:
        """Drop the private copies (frees their memory; the next call rebuilds them)."""
        with self._lock:
            self._slots.clear()

    def uses_packed(self, prepared: _Prepared | None = None) -> bool:
        """Whether scoring runs packed now (``config.attention`` resolved for this device and model)."""
        prepared = prepared or self.prepared()
        if self.config.attention == "auto" and prepared.dtype == INT8_DTYPE:
            return False  # int8 was measured and validated padded (its dynamic activation scales see the batch)
        return use_packed(self.config.attention, self.rm.device, prepared.packed is not None,
                          getattr(self.rm, "name", "model"))

    def plans_by_tokens(self, prepared: _Prepared) -> bool:
        """Whether packed batches are planned by real tokens: where ``varlen_attn`` runs them (CUDA, bf16 or
        fp16), a pass costs its real tokens; on the exact SDPA route (the CPU, fp32) attention works on a block
        padded to the longest row, so batches are planned as padded ones are and packing saves only the
        linear layers' padding (by real tokens, one long row among many short ones made a block of them all)."""
        return flash_varlen_available(self.rm.device) and prepared.dtype in (torch.bfloat16, torch.float16)

    # -- scoring
    def _limits(self, batch_size: int | None, max_batch_tokens: int | None) -> tuple[int | None, int | None]:
        budget = self.config.max_batch_tokens if max_batch_tokens is None else max_batch_tokens
        if budget == "auto":  # per call: the memory free to this process changes (a policy model beside it)
            budget = default_batch_tokens(getattr(self.rm, "device", "cpu"), getattr(self.rm, "model", None),
                                          max_length=getattr(getattr(self.rm, "config", None), "max_length", 512))
        if budget is not None and budget < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {budget}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size, budget

    @property
    def pad_id(self) -> int:
        return self.rm.tokenizer.pad_token_id or 0

    @torch.inference_mode()
    def run_units(
        self, encodings: Sequence[Encoded], units: Sequence[Sequence[int]],
        batch_size: int | None = None, max_batch_tokens: int | None = None, dtype: torch.dtype | None = None,
    ) -> list[float]:
        """P(choice 0) for each encoding; the encodings of a unit always share a batch."""
        max_rows, budget = self._limits(batch_size, max_batch_tokens)
        if not encodings:
            return []
        prepared = self.prepared(dtype)
        batches = host_batches(encodings, units, self.pad_id, self.uses_packed(prepared), max_rows, budget,
                               by_tokens=self.plans_by_tokens(prepared))
        return self.run_batches(prepared, batches, len(encodings))

    @torch.inference_mode()
    def run_batches(self, prepared: _Prepared, batches: Iterable[HostBatch], n: int) -> list[float]:
        """P(choice 0) for ``n`` encodings from batches built on the host (``batches.host_batches``): each is
        copied (non-blocking) and run; the results are read back once, at the end, so that the device is
        never drained between passes."""
        device = self.rm.device
        done: list[tuple[list[int], torch.Tensor]] = []
        for batch in batches:
            if batch.packed is not None:
                logits = prepared.packed(batch.packed.to(device, non_blocking=True))
            else:
                # No padding: no mask. transformers would test an all-ones mask on the device (``mask.all()``, a
                # host-device sync per pass on CUDA) only to drop it.
                tensors = {k: v.to(device, non_blocking=True) for k, v in batch.padded.items()
                           if k != "attention_mask" or batch.padding}
                logits = prepared.forward(tensors["input_ids"], tensors.get("attention_mask"),
                                          tensors["mask_positions"], tensors.get("token_type_ids"))
            done.append((batch.rows, torch.softmax(logits.float(), dim=-1)[:, 0]))
        probs = [0.0] * n
        if done:
            values = torch.cat([p for _, p in done]).tolist()
            for j, p in zip((j for rows, _ in done for j in rows), values):
                probs[j] = p
        return probs

    def choice_probs(
        self, encodings: Sequence[Encoded], batch_size: int | None = None, max_batch_tokens: int | None = None
    ) -> list[float]:
        return self.run_units(encodings, [[i] for i in range(len(encodings))], batch_size, max_batch_tokens)

    def read_probs(self, encodings: Sequence, token_ids: torch.Tensor | None = None, batch_size: int | None = None,
                   max_batch_tokens: int | None = None) -> list[list[float]]:
        """The softmax over ``token_ids`` (default: the model's answer ids), its first entry, at every read mask
        of each encoding (``mask_positions`` lists: process verdicts, ``tinyrm.process.scoring``), in that
        order; one per encoding at [CLS] where the model reads there. Batched, cast, packed and near-tie
        rechecked as pairs are: a reduced-precision read within ``recheck_margin`` of 0.5 has its encoding
        re-read in fp32."""
        max_rows, budget = self._limits(batch_size, max_batch_tokens)
        probs = self._read(encodings, token_ids, max_rows, budget)
        if self.config.recheck_margin > 0 and self.prepared().dtype != torch.float32:
            close = [i for i, row in enumerate(probs) if any(abs(p - 0.5) < self.config.recheck_margin for p in row)]
            if close:
                exact = self._read([encodings[i] for i in close], token_ids, max_rows, budget, torch.float32)
                for i, row in zip(close, exact):
                    probs[i] = row
                self.rechecked += len(close)
        return probs

    @torch.inference_mode()
    def _read(self, encodings: Sequence, token_ids: torch.Tensor | None, max_rows: int | None, budget: int | None,
              dtype: torch.dtype | None = None) -> list[list[float]]:
        if not encodings:
            return []
        read = getattr(self.rm.config, "read", "mask")
        read_cls = read == "cls"
        if read_cls and any(len(e.mask_positions) != 1 for e in encodings):
            raise ValueError("this model reads its verdict at [CLS], one per sequence: each sequence must read one "
                             "mask (a process model: score it with context 'prefix'; a 'full' window reads several "
                             "steps at once)")
        device, prepared = self.rm.device, self.prepared(dtype)
        token_ids = self.rm._answer_ids_t if token_ids is None else token_ids.to(device)
        regions = self.config.compile and prepared.dtype != INT8_DTYPE
        done: list[tuple[list[int], torch.Tensor]] = []
        for batch in host_batches(encodings, [[i] for i in range(len(encodings))], self.pad_id,
                                  self.uses_packed(prepared), max_rows, budget, pin=device.type == "cuda",
                                  by_tokens=self.plans_by_tokens(prepared)):
            if batch.packed is not None:
                stream = batch.packed.to(device, non_blocking=True)
                logits = packed_mask_logits(prepared.model, stream, token_ids,
                                            stream.starts if read_cls else stream.mask_index, compiled=regions)
            else:
                t = {k: v.to(device, non_blocking=True) for k, v in batch.padded.items()
                     if k != "attention_mask" or batch.padding}
                positions = read_positions(read, t["mask_positions"])
                logits = mask_logits(prepared.model, t["input_ids"], t.get("attention_mask"), positions,
                                     token_ids=token_ids, token_type_ids=t.get("token_type_ids"),
                                     mask_rows=t["mask_rows"])
            done.append((batch.rows, torch.softmax(logits.float(), dim=-1)[:, 0]))
        values = iter(torch.cat([p for _, p in done]).tolist())  # one read-back, at the end
        out: list[list[float]] = [[] for _ in encodings]
        for rows, _ in done:
            for j in rows:
                out[j] = [next(values) for _ in encodings[j].mask_positions]
        return out

    def _encode_chunk(self, items: Sequence[PairInput], both: bool,
                      prefixes: Sequence[str | None] | None = None) -> list[Encoded]:
        """Encodings of ``items`` (then of their swapped orders); ``prefixes`` gives each item's
        instruction (None: the encoder's default). The token cache is keyed by text, so a row's own
        instruction is cached apart from the default one."""
        encoder = self.rm.encoder
        if isinstance(encoder, CachingClozeEncoder):
            encoder.cache_size = self.config.cache_size
            encoder.prefetch(items, prefixes, both=bool(both))
        rows = [None] * len(items) if prefixes is None else prefixes
        out = [encoder.encode(p, a, b, prefix=x) for (p, a, b), x in zip(items, rows)]
        if both:
            out += [encoder.encode(p, b, a, prefix=x) for (p, a, b), x in zip(items, rows)]
        return out

    def _score_chunk(self, encodings: list[Encoded], n: int, both: bool, batch_size, budget) -> list[float]:
        if isinstance(both, AutoOrder):  # the swapped order only for undecided pairs (inference.adaptive)
            return both.score(self, encodings, n, batch_size, budget)
        probs = self.run_units(encodings, pair_units(n, both), batch_size, budget)
        return self.finish_chunk(probs, encodings, n, both, batch_size, budget)

    def finish_chunk(self, probs: list[float], encodings: list[Encoded], n: int, both: bool, batch_size,
                     budget) -> list[float]:
        """P(a better) of a chunk's ``n`` pairs from P(choice 0) of its encodings, near-ties rechecked."""
        scores = pair_scores(probs, n, both)
        self.recheck_ties(scores, encodings, [bool(both)] * n, batch_size, budget)
        return scores

    def recheck_ties(self, scores: list[float], encodings: list[Encoded], pair_both: Sequence[bool],
                     batch_size, budget) -> None:
        """The ``recheck_margin`` guard, in place: with a reduced-precision copy, pairs whose P is within
        the margin of 0.5 are re-scored in fp32, in the orders they were scored in (``pair_both[i]``:
        pair i in both orders, its swapped encoding at ``n + i``)."""
        margin = self.config.recheck_margin
        if margin <= 0 or self.prepared().dtype == torch.float32:
            return
        n = len(pair_both)
        for both in (True, False):
            close = [i for i in range(n) if pair_both[i] == both and abs(scores[i] - 0.5) < margin]
            if not close:
                continue
            sub = [encodings[i] for i in close] + ([encodings[n + i] for i in close] if both else [])
            for i, p in zip(close, self._score_chunk_fp32(sub, len(close), both, batch_size, budget)):
                scores[i] = p
            self.rechecked += len(close)

    def _score_chunk_fp32(self, encodings: list[Encoded], n: int, both: bool, batch_size, budget) -> list[float]:
        probs = self.run_units(encodings, pair_units(n, both), batch_size, budget, dtype=torch.float32)
        return pair_scores(probs, n, both)

    def overlap_enabled(self, n_items: int) -> bool:
        """Whether ``compare_batch`` runs the host pipeline: on (auto: on GPU) and more than one chunk."""
        mode = self.config.overlap
        on = mode == "on" or (mode == "auto" and self.rm.device.type == "cuda")
        return on and n_items > self.config.chunk_pairs

    def compare_batch(
        self, items: Iterable[PairInput], both: bool | AutoOrder, batch_size: int | None = None,
        max_batch_tokens: int | None = None, prefixes: Sequence[str | None] | None = None,
    ) -> list[float]:
        """P(a better than b) per item; with the host pipeline (``overlap``, ``inference.pipeline``) chunk by
        chunk, each tokenised, planned and collated ahead in worker threads while the device runs.

        ``prefixes``: one instruction per item (None entries: the encoder's default prefix).
        """
        items = list(items)
        check_pairs(items)
        # The budget resolved once ("auto": the device's free memory now) and handed down as a number, so the
        # chunks, the pipeline and the near-tie recheck do not each ask the device again.
        _, budget = self._limits(batch_size, max_batch_tokens)
        if prefixes is not None:
            prefixes = list(prefixes)
            if len(prefixes) != len(items):
                raise ValueError(f"got {len(prefixes)} prefixes for {len(items)} pairs")
        with gc_paused(self.config.pause_gc):
            if not self.overlap_enabled(len(items)):
                return self._score_chunk(self._encode_chunk(items, both, prefixes), len(items), both, batch_size,
                                         budget)
            return run_pipeline(self, items, both, batch_size, budget, prefixes)

