"""Packed (unpadded) batches and exact attention over them.

A packed batch is its sequences laid end to end in one token stream, with cumulative lengths
(``cu_seqlens``, int32, FlashAttention's convention): no padding token anywhere, so every linear
layer and MLP computes real tokens only. Attention must still keep each sequence to itself:

* ``flash``: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention for variable lengths, torch >=
  2.10, CUDA only, bf16/fp16), with ``window_size`` for a sliding window where the installed torch has it;
* ``sdpa``: every other case (CPU, fp32, attention dropout, a window the installed ``varlen_attn``
  lacks). The queries, keys and values are gathered into a ``[B, H, L, D]`` block padded to the
  longest sequence (a view of the stream when all have one length), one SDPA call runs over it with a
  key-padding (and window) mask, and the real rows are gathered back. Exact: padding is confined to
  the attention scores, whose padded rows are dropped. The linear layers around it see no padding.

Everything here is differentiable, so a packed training step reuses it (``tinyrm.training.packing``;
``varlen_attn``'s backward where :func:`varlen_backward_available`, SDPA's elsewhere).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Packed:
    """One packed batch (``pack``): ``T`` tokens of ``B`` sequences."""

    input_ids: torch.Tensor  # [T] long
    position_ids: torch.Tensor  # [T] long, restarting at 0 for each sequence
    cu_seqlens: torch.Tensor  # [B + 1] int32: sequence b is tokens cu_seqlens[b]:cu_seqlens[b + 1]
    max_seqlen: int
    lengths: list[int]  # host copy of the B lengths (no device sync to plan the attention)
    # [B] long: each sequence's mask slot in the flat stream ([M], in sequence order, for encodings with several
    # read masks: ``mask_positions``, process verdicts)
    mask_index: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None  # [T] long
    response_mask: torch.Tensor | None = None  # [T]: 1 on response tokens (the token baseline)
    _maps: dict = field(default_factory=dict, repr=False)  # the sdpa route's index maps, built once per batch

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def equal_lengths(self) -> bool:
        """Every sequence has the longest one's length: the ``[B, L]`` block is a view of the stream."""
        return min(self.lengths) == self.max_seqlen

    @property
    def starts(self) -> torch.Tensor:
        """[B] long: each sequence's first token ([CLS]) in the flat stream."""
        return self.cu_seqlens[:-1].long()

    def _map(self, fn) -> Packed:
        def apply(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        return Packed(apply(self.input_ids), apply(self.position_ids), apply(self.cu_seqlens), self.max_seqlen,
                      self.lengths, apply(self.mask_index), apply(self.token_type_ids), apply(self.response_mask))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Packed:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Packed:
        """A copy in page-locked host memory (a CUDA host), for ``to(device, non_blocking=True)``."""
        return self._map(torch.Tensor.pin_memory)

    def inputs(self) -> dict:
        """The batch as model keyword arguments (what a packed training collator returns; the Trainer moves
        the tensors): ``input_ids``, ``position_ids``, ``cu_seqlens``, ``max_seqlen`` and ``seq_lengths`` (host
        values), and where present ``mask_positions`` (in the flat stream), ``token_type_ids``, ``response_mask``."""
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids, "cu_seqlens": self.cu_seqlens,
               "max_seqlen": self.max_seqlen, "seq_lengths": list(self.lengths)}
        for name, value in (("mask_positions", self.mask_index), ("token_type_ids", self.token_type_ids),
                            ("response_mask", self.response_mask)):
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_inputs(cls, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                    max_seqlen: int, seq_lengths: Sequence[int], mask_positions: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None, response_mask: torch.Tensor | None = None) -> Packed:
        """The inverse of :meth:`inputs`."""
        return cls(input_ids, position_ids, cu_seqlens, int(max_seqlen), [int(n) for n in seq_lengths],
                   mask_positions, token_type_ids, response_mask)

    def sequence_ids(self) -> torch.Tensor:
        """[T] long: which sequence each token belongs to."""
        if "seq" not in self._maps:  # from the device's own position ids: no host data, no sync on a GPU
            self._maps["seq"] = (self.position_ids == 0).cumsum(0) - 1
        return self._maps["seq"]

    def segment_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums of ``values`` ``[T, ...]`` -> ``[B, ...]`` (differentiable)."""
        out = values.new_zeros((self.batch_size, *values.shape[1:]))
        return out.index_add(0, self.sequence_ids(), values)

    def padded_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gather [B, L] into the stream; scatter [T] into B x L; valid [B, L]). A padded slot gathers the
        stream's last token: a real value, which the key-padding mask hides and whose query row is dropped."""
        if "pad" not in self._maps:
            total, width = int(self.input_ids.shape[0]), self.max_seqlen
            flat = self.sequence_ids() * width + self.position_ids
            gather = torch.full((self.batch_size * width,), total, dtype=torch.long, device=flat.device)
            gather[flat] = torch.arange(total, device=flat.device)
            gather = gather.view(self.batch_size, width)
            self._maps["pad"] = (gather.clamp(max=total - 1), flat, gather != total)
        return self._maps["pad"]

    def attention_mask(self, window: int | None) -> torch.Tensor | None:
        """The sdpa route's boolean mask ``[B, 1, L, L]`` (``[B, 1, 1, L]`` without a window, ``[1, 1, L, L]``
        with one and no padding; None: nothing to mask)."""
        key = ("mask", window)
        if key not in self._maps:
            width = self.max_seqlen
            full = self.equal_lengths  # no padding in the block: only the window masks
            banded = window is not None and width - 1 > window
            valid = None if full else self.padded_maps()[2]
            if not banded:
                mask = None if full else valid[:, None, None, :]
            else:
                pos = torch.arange(width, device=self.input_ids.device)
                band = (pos[:, None] - pos[None, :]).abs() <= window  # ModernBERT: |i - j| <= local_attention // 2
                # Padded query rows may attend anywhere: a row with no key at all would give NaN.
                mask = band[None, None] if full else ((band[None] & valid[:, None, :]) | ~valid[:, :, None])[:, None]
            self._maps[key] = mask
        return self._maps[key]


def pack(encodings: Sequence, device: torch.device | str | None = None) -> Packed:
    """Collate encodings (``input_ids`` lists; ``token_type_ids``, ``mask_position`` (or a list,
    ``mask_positions``) and ``response_mask`` where they have them: ``prompt.Encoded``, ``ResponseEncoded``,
    ``process.prompt.StepEncoded``) into one :class:`Packed` batch."""
    if not encodings:
        raise ValueError("pack: no encodings")
    lengths = [len(e.input_ids) for e in encodings]
    if min(lengths) < 1:
        raise ValueError("pack: an empty sequence")
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths_t, 0)
    starts = cu[:-1].long()
    total = int(cu[-1])
    positions = torch.arange(total, dtype=torch.long) - torch.repeat_interleave(starts, lengths_t)
    first = encodings[0]

    def flat(name: str) -> torch.Tensor | None:
        if getattr(first, name, None) is None:
            return None
        # np.fromiter with a count: no intermediate list (torch.tensor of one cost the host ~3x more per token)
        values = chain.from_iterable(getattr(e, name) for e in encodings)
        return torch.from_numpy(np.fromiter(values, dtype=np.int64, count=total))

    mask_index = None
    if getattr(first, "mask_positions", None) is not None:  # several read masks per sequence (process verdicts)
        mask_index = torch.tensor([int(start) + m for e, start in zip(encodings, starts.tolist())
                                   for m in e.mask_positions], dtype=torch.long)
    elif getattr(first, "mask_position", None) is not None:
        mask_index = starts + torch.tensor([e.mask_position for e in encodings], dtype=torch.long)
    packed = Packed(flat("input_ids"), positions, cu, max(lengths), lengths, mask_index,
                    flat("token_type_ids"), flat("response_mask"))
    return packed if device is None else packed.to(device)


# ----------------------------------------------------------------------------- attention routes
@lru_cache(maxsize=1)
def _varlen_attn():
    """torch's ``varlen_attn`` (torch >= 2.10), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@lru_cache(maxsize=1)
def _varlen_params() -> frozenset[str]:
    fn = _varlen_attn()
    return frozenset() if fn is None else frozenset(inspect.signature(fn).parameters)


def varlen_window_supported() -> bool:
    """Whether the installed ``varlen_attn`` takes ``window_size`` (sliding-window layers; torch 2.13 does)."""
    return "window_size" in _varlen_params()


@lru_cache(maxsize=1)
def varlen_backward_available() -> bool:
    """Whether the installed ``varlen_attn`` has a backward: autograd registered on its custom op (torch 2.13
    does; so did the first release with it, 2.10, per its source; checked here rather than assumed)."""
    fn = _varlen_attn()
    if fn is None:
        return False
    op = getattr(sys.modules.get(fn.__module__), "_varlen_attn", None)
    if getattr(op, "_backward_fn", None) is not None:  # torch.library.custom_op's register_autograd
        return True
    name = getattr(op, "_qualname", None)
    try:
        return bool(name) and torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")
    except (AttributeError, RuntimeError):
        return False


def flash_varlen_available(device: torch.device | str) -> bool:
    """``varlen_attn`` exists and runs here: a CUDA device (it has no CPU kernel in torch 2.13) that
    FlashAttention supports (Ampere, compute capability 8.0, or newer: not a T4 or a V100)."""
    device = torch.device(device)
    if device.type != "cuda" or _varlen_attn() is None:
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= (8, 0)


@functools.cache
def _capability(index: int) -> tuple[int, int]:  # asked per layer and pass: once per device
    return torch.cuda.get_device_capability(index)


def attention_route(q: torch.Tensor, window: int | None, dropout_p: float, scale: float | None = None) -> str:
    """``flash`` where ``varlen_attn`` computes exactly this layer, else ``sdpa``."""
    if dropout_p > 0 or q.dtype not in (torch.float16, torch.bfloat16) or not flash_varlen_available(q.device):
        return "sdpa"  # varlen_attn has no dropout and FlashAttention no fp32
    if window is not None and not varlen_window_supported():
        return "sdpa"
    if q.requires_grad and torch.is_grad_enabled() and not varlen_backward_available():
        return "sdpa"  # a backward will be asked for; as training's route choice (inference.packed.use_packed) says
    if scale is not None and "scale" not in _varlen_params() and abs(scale * q.shape[-1] ** 0.5 - 1) > 1e-6:
        return "sdpa"  # an older varlen_attn without scale= only does 1 / sqrt(head_dim)
    return "flash"


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: Packed, *, scale: float,
                     window: int | None = None, dropout_p: float = 0.0, route: str | None = None) -> torch.Tensor:
    """Bidirectional attention within each sequence: ``q``, ``k``, ``v`` and the result are ``[T, H, D]``.

    ``window``: keys within ``|i - j| <= window`` only (ModernBERT's local layers). ``route`` forces
    ``flash`` or ``sdpa`` (default: :func:`attention_route`).
    """
    route = route or attention_route(q, window, dropout_p, scale)
    if route == "flash":
        extra = {} if window is None else {"window_size": (window, window)}
        if "scale" in _varlen_params():
            extra["scale"] = scale
        cu, longest = packed.cu_seqlens, packed.max_seqlen
        return _varlen_attn()(q, k, v, cu, cu, longest, longest, **extra)
    mask = packed.attention_mask(window)
    if packed.equal_lengths:  # the block is a view, nothing to gather
        shape = (packed.batch_size, packed.max_seqlen, *q.shape[1:])
        out = F.scaled_dot_product_attention(*(x.view(shape).transpose(1, 2) for x in (q, k, v)), attn_mask=mask,
                                             dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)
    gather, scatter, _ = packed.padded_maps()

    def padded(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [B, H, L, D]: one copy, no zero row appended
        return x[gather].transpose(1, 2)

    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask, dropout_p=dropout_p,
                                         scale=scale)
    return out.transpose(1, 2).reshape(-1, *q.shape[1:])[scatter]
