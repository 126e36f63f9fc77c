"""Training the cloze objective: the backbone (freezing / DoRA applied) read at the answer slot."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..backbone import load_mlm, prepare_for_training
from ..config import RewardConfig, check_read
from ..data import load_pairs
from ..defaults import resolve_defaults
from ..inference.packed import packed_mlm_supported
from ..model_card import add_eval
from ..prompt import get_template
from ..training.config import TrainConfig, TrainResult, backbone_config, recorded_options
from ..training.packing import packed_training
from ..training.trainer import arguments_for, finish, fit, make_result, report_parameters
from .data import ClozeCollator, ClozeDataset, load_training_pairs, pair_group_size
from .dev_eval import DevEvalCallback
from .model import RewardModel


def build_model(config: TrainConfig) -> RewardModel:
    """Backbone with freezing/DoRA applied, wrapped as a RewardModel carrying the prompt config."""
    config = resolve_defaults(config, announce=False)
    tokenizer, mlm = load_mlm(config.model, head_seed=None)
    model = prepare_for_training(mlm, backbone_config(config))
    reward_config = RewardConfig(
        template=get_template(config.template).to_dict(), prefix=config.prefix,
        answer_tokens=list(config.answer_tokens), max_length=config.max_length, base_model=config.model,
        read=check_read(config.read),
        extra={"train": recorded_options(config)},  # not the runtime options (attention)
        domain_prefixes=dict(config.domain_prefixes) if config.domain_prefixes else None,
        truncation=config.truncation, diff_context=config.diff_context,  # rm.encoder tokenises the data too
    )
    return RewardModel(model, tokenizer, reward_config, device="cpu")


def train(config: TrainConfig) -> TrainResult:
    """Train a cloze reward model on ``config.data`` and save it to ``config.output`` (``tinyrm.train.train``
    resolves the defaults and dispatches here for ``objective="cloze"``)."""
    from transformers import set_seed

    set_seed(config.seed)  # before the model is built: an initialised MLM head is seeded too
    args = arguments_for(config)
    with args.main_process_first(desc="reading the data"):  # rank 0 fills the cache, the others reuse it
        table = load_training_pairs(config)
    rm = build_model(config)
    parameters = report_parameters(rm.model)
    with args.main_process_first(desc="tokenising"):
        dataset = ClozeDataset(table, rm.encoder, config.order, config.seed, config.domain_prefixes)
    dataset.group_size = pair_group_size(dataset.group_size, config)
    dev = dev_callback(config, rm)
    packed = packed_training(config, args.device, packed_mlm_supported(rm.model), rm.name)
    collator = ClozeCollator(rm.tokenizer.pad_token_id or 0, packed=packed)
    outcome = fit(rm.scorer(loss=config.loss), dataset, collator, config, args, callbacks=[dev] if dev else [])
    result = make_result(config, outcome, 2 if config.order == "both" else 1, parameters,
                         truncated=dataset.truncated, skipped=table.skipped)

    def save(scorer) -> None:
        rm.model = scorer.mlm
        rm.config.extra.update(result=asdict(result), data=[str(d) for d in config.data])  # data: model card
        if dev is not None and dev.last is not None:  # the final dev score goes into the card
            add_eval(rm.config, dev.last, data=config.eval_data)
        rm.save_pretrained(config.output)

    finish(config, outcome, result, save)
    return result


def dev_callback(config: TrainConfig, rm: RewardModel) -> DevEvalCallback | None:
    """``--eval-data``: score those pairs with the live weights during training."""
    if not config.eval_data:
        return None
    pairs = load_pairs(config.eval_data, skip_bad_rows=config.skip_bad_rows).pairs
    return DevEvalCallback(rm, pairs, config.eval_steps, Path(config.output) / "metrics.jsonl")
