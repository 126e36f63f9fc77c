"""ONNX export of the scoring path and an ONNX Runtime reward model.

The exported graph is the reward model's actual inference function: encoder, then the MLM-head
transform and the two answer logits at the mask row only (``backbone.mask_logits``), so the
folder ``DIR`` holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``, ``mask_positions``
[, ``token_type_ids``]; output ``logits`` ``[batch, 2]``), the tokenizer and ``tinyrm.json``.
``OnnxRewardModel`` scores with it through the same token-budget batching as ``RewardModel``.

Needs the ``onnx`` extra (``pip install 'tinyrm[onnx]'``). Whether it beats the PyTorch path is
measured by ``benchmarks/inference.py --onnx`` (see docs/inference.md).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..backbone import mask_logits, read_positions, unwrap_peft
from ..config import RewardConfig
from ..pairwise.model import RewardModel
from ..prompt import get_template, resolve_answer_ids
from .engine import CachingClozeEncoder, InferenceConfig, InferenceEngine, _Prepared

logger = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model.int8.onnx"


@dataclass
class ExportConfig:
    model: str = "default"
    output: str = "onnx"
    max_length: int | None = None
    opset: int = 18
    quantize: bool = False  # also write an int8 dynamically quantised graph (model.int8.onnx)


class _MaskScorer(nn.Module):
    """What gets traced: the answer logits at the mask (at [CLS] for a model that reads there,
    ``RewardConfig.read``), nothing else."""

    def __init__(self, mlm: nn.Module, answer_ids: list[int], token_types: bool, read: str = "mask") -> None:
        super().__init__()
        self.mlm = mlm
        self.token_types, self.read = token_types, read
        self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)

    def forward(self, input_ids, attention_mask, mask_positions, token_type_ids=None):
        # read_positions as the engine: the input stays, so every exported graph takes the same feed.
        return mask_logits(self.mlm, input_ids, attention_mask, read_positions(self.read, mask_positions),
                           token_ids=self.answer_ids, token_type_ids=token_type_ids if self.token_types else None)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the onnx extra: pip install 'tinyrm[onnx]'") from error
    return onnxruntime


def export_onnx(config: ExportConfig, rm: RewardModel | None = None) -> Path:
    """Export ``config.model`` (or the already loaded ``rm``) to ``config.output``; returns the ONNX file.

    Pass ``rm`` to compare against the very weights exported: a checkpoint without MLM-head weights
    (the embedded default) gets a new random head on every load.
    """
    _require_onnx()
    if rm is None:
        rm = RewardModel.from_pretrained(config.model, device="cpu", max_length=config.max_length)
    mlm = copy.deepcopy(rm.model)  # casting / moving must not touch the caller's model
    if unwrap_peft(mlm) is not mlm:
        mlm = mlm.merge_and_unload()  # adapters folded into the exported weights
    mlm = mlm.float().eval().cpu()
    sample = rm.encode("What is two plus two?", "Four.", "Five, and here is a longer answer.")
    token_types = sample.token_type_ids is not None
    scorer = _MaskScorer(mlm, rm.answer_ids, token_types, read=getattr(rm.config, "read", "mask"))
    ids = torch.tensor([sample.input_ids, sample.input_ids])
    args: tuple = (ids, torch.ones_like(ids), torch.tensor([sample.mask_position] * 2))
    names = ["input_ids", "attention_mask", "mask_positions"]
    if token_types:
        args += (torch.tensor([sample.token_type_ids] * 2),)
        names.append("token_type_ids")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    axes = {name: {0: "batch", 1: "sequence"} for name in names if name != "mask_positions"}
    axes["mask_positions"] = {0: "batch"}
    axes["logits"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        # The TorchScript exporter handles HF encoders with dynamic batch and length reliably.
        torch.onnx.export(scorer, args, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=config.opset, dynamo=False)
    rm.tokenizer.save_pretrained(out)
    saved = RewardConfig(**{k: getattr(rm.config, k) for k in RewardConfig.__dataclass_fields__})
    saved.adapter = None
    saved.extra = {**saved.extra, "onnx": ONNX_FILE}
    saved.save(out)
    if config.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(out / QUANTIZED_FILE), weight_type=QuantType.QInt8)
    return path


class _OnnxEngine(InferenceEngine):
    """The token-budget batching of ``InferenceEngine`` with an ONNX Runtime session as forward."""

    def prepared(self, dtype: torch.dtype | None = None) -> _Prepared:
        if None not in self._slots:
            session = self.rm.session
            wanted = {i.name for i in session.get_inputs()}
            # A graph exported before the [CLS] read was traced in read at the mask: fed position 0 it reads [CLS].
            read = getattr(self.rm.config, "read", "mask")

            def forward(input_ids, attention_mask, mask_positions, token_type_ids=None):
                mask_positions = read_positions(read, mask_positions)
                mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # None: no padding
                feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy(),
                        "mask_positions": mask_positions.numpy()}
                if "token_type_ids" in wanted:
                    feed["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                              else torch.zeros_like(input_ids)).numpy()
                return torch.from_numpy(session.run(["logits"], feed)[0])

            self._slots[None] = _Prepared(("onnx",), None, forward, torch.float32)
        return self._slots[None]


class OnnxRewardModel:
    """``compare`` / ``compare_batch`` on an exported folder, through ONNX Runtime on CPU."""

    def __init__(self, session, tokenizer, config: RewardConfig, name: str = "onnx") -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device("cpu")
        self.name = name
        self.encoder = CachingClozeEncoder(tokenizer, get_template(config.template), prefix=config.prefix,
                                           max_length=config.max_length, truncation=config.truncation,
                                           diff_context=config.diff_context)
        self.answer_ids = resolve_answer_ids(tokenizer, config.answer_tokens)
        self.engine = _OnnxEngine(self, InferenceConfig(precision="fp32"))

    @classmethod
    def load(cls, directory: str | Path, quantized: bool = False, threads: int | None = None) -> OnnxRewardModel:
        ort = _require_onnx()
        from transformers import AutoTokenizer

        directory = Path(directory)
        path = directory / (QUANTIZED_FILE if quantized else ONNX_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no exported model (run `tinyrm export --onnx {directory}`)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, AutoTokenizer.from_pretrained(directory), RewardConfig.load(directory), str(directory))

    def encode(self, prompt: str, a: str, b: str):
        return self.encoder.encode(prompt, a, b)

    # The same pairs-to-engine logic as RewardModel (it reads only ``config`` and ``engine``).
    compare_batch = RewardModel.compare_batch

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)], both_orders=both_orders)[0]
