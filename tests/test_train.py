import json

import pytest
import torch
from safetensors.torch import load_file

from tinyrm import RewardModel
from tinyrm.backbone import load_mlm
from tinyrm.errors import UsageError
from tinyrm.train import TrainConfig, train


def tiny_config(model, data, out, **kw):
    base = dict(model=model, data=[str(data)], output=str(out), batch_size=8, micro_batch_size=4, max_steps=3,
                max_length=96, save_steps=0, lr=1e-3, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_frozen_weights_are_bit_identical_after_training(tiny_model, pairs_file, tmp_path, capsys):
    train(tiny_config(tiny_model, pairs_file, tmp_path / "out", freeze_layers=1))
    assert "trainable" in capsys.readouterr().out
    before, after = load_mlm(tiny_model)[1].state_dict(), weights(tmp_path / "out")
    frozen = [k for k in after if "embeddings" in k or ".layers.0." in k or ".layer.0." in k]
    moved = [k for k in after if ".layers.1." in k or ".layer.1." in k]
    assert frozen and moved
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in moved)


def test_dora_model_saves_adapter_and_reloads_identically(tiny_model, pairs_file, tmp_path, request):
    out = tmp_path / "dora"
    train(tiny_config(tiny_model, pairs_file, out, dora_rank=4, freeze_layers=1))
    cfg = json.loads((out / "tinyrm.json").read_text())
    assert cfg["adapter"] == "adapter"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    # The reload: a DoRA model in memory, its adapters non-zero (peft starts lora_B at zero, and a 3-step run
    # barely moves them), saved, then loaded back, scores as it did before saving (one order, fp32). On a
    # widely initialised backbone: at initializer_range 0.02 the adapters move P by as little as 2e-4.
    from tinyrm.backbone import BackboneConfig, apply_dora, load_mlm
    from tinyrm.config import RewardConfig

    from .conftest import _save_tiny
    from .packed_helpers import randomize_adapters

    wide = _save_tiny(request.node.callspec.params["tiny_model"], tmp_path / "wide", seed=3, initializer_range=0.2)
    tokenizer, mlm = load_mlm(wide)
    peft = randomize_adapters(apply_dora(mlm, BackboneConfig(dora_rank=4, freeze_layers=1)))
    memory = RewardModel(peft, tokenizer, RewardConfig(base_model=wide), device="cpu")
    memory.engine.config.precision = "fp32"
    items = [("q", "yes it is", "no"), ("2+2?", "4", "5"), ("Name a colour.", "Blue.", "Seven.")]
    in_memory = memory.compare_batch(items, both_orders=False)
    memory.save_pretrained(tmp_path / "saved")
    base = RewardModel.from_pretrained(wide, device="cpu", precision="fp32")  # the same model, no adapter
    assert max(abs(p - q) for p, q in zip(in_memory, base.compare_batch(items, both_orders=False))) > 1e-3
    reloaded = RewardModel.from_pretrained(str(tmp_path / "saved"), device="cpu", precision="fp32")
    assert reloaded.compare_batch(items, both_orders=False) == pytest.approx(in_memory, abs=1e-5)


def test_metrics_jsonl_has_loss_and_accuracy(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "m"
    train(tiny_config(tiny_model, pairs_file, out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3 and all(0.0 <= r["accuracy"] <= 1.0 for r in steps)
    assert records[-1]["event"] == "train_end"


def test_resume_continues_with_the_same_data_order(tiny_bert, pairs_file, tmp_path):
    full = tmp_path / "full"
    train(tiny_config(tiny_bert, pairs_file, full, max_steps=4, save_steps=2))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    result = train(tiny_config(tiny_bert, pairs_file, resumed, max_steps=4, save_steps=2, resume=True))
    assert result.steps == 4
    a, b = weights(full), weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


def test_resume_without_checkpoint_is_an_error(tiny_bert, pairs_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(tiny_bert, pairs_file, tmp_path / "empty", resume=True))


@pytest.mark.parametrize("ratio", [1.0, 2.0, -0.1])
def test_a_warmup_ratio_outside_0_1_is_refused(tiny_bert, pairs_file, tmp_path, ratio):
    # transformers reads warmup_steps >= 1 as a step count: 1.0 would silently mean one warm-up step
    with pytest.raises(UsageError, match=r"--warmup-ratio must be in \[0, 1\)"):
        train(tiny_config(tiny_bert, pairs_file, tmp_path / "w", warmup_ratio=ratio))


def test_full_vocab_loss_and_random_order(tiny_bert, pairs_file, tmp_path):
    result = train(tiny_config(tiny_bert, pairs_file, tmp_path / "fv", loss="full-vocab", order="random"))
    assert result.steps == 3


def test_training_learns_a_learnable_task(tiny_bert, tmp_path):
    from tinyrm.data import PreferencePair
    from tinyrm.evaluation.evaluate import evaluate_pairs
    from tinyrm.tools.synthetic import write_jsonl

    pairs = [PreferencePair(prompt=f"item {i}", chosen="good answer", rejected="bad answer") for i in range(64)]
    data = write_jsonl(pairs, tmp_path / "easy.jsonl")
    train(tiny_config(tiny_bert, data, tmp_path / "easy", max_steps=30, batch_size=16, micro_batch_size=16,
                      lr=3e-3, length_balance=False))  # every chosen answer is the longer one
    rm = RewardModel.from_pretrained(str(tmp_path / "easy"))
    assert evaluate_pairs(rm, pairs[:16])["accuracy"] == 1.0


# ------------------------------------------------------------------ both orders of a pair share a batch
def test_grouped_sampler_keeps_groups_together_and_covers_every_example():
    from tinyrm.training.sampler import GroupedSampler

    lengths = [10, 10, 3, 3, 7, 7, 1, 1, 9, 9, 4, 4]
    sampler = GroupedSampler(12, 2, seed=3, lengths=lengths, megabatch=3)
    order = list(sampler)
    assert sorted(order) == list(range(12))
    assert all(order[i] // 2 == order[i + 1] // 2 and order[i] % 2 == 0 for i in range(0, 12, 2))
    # within each megabatch of 3 groups, longest first
    for start in (0, 6):
        group_lengths = [lengths[j] for j in order[start:start + 6:2]]
        assert group_lengths == sorted(group_lengths, reverse=True)
    assert list(GroupedSampler(12, 2, seed=3, lengths=lengths, megabatch=3)) == order  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new shuffle each epoch
    with pytest.raises(ValueError, match="groups of 2"):
        GroupedSampler(7, 2, seed=0)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_training_batch_holds_both_orders_of_its_pairs(tiny_bert, pairs_file, tmp_path, group_by_length):
    """The defect that kept `tinyrm train` at chance: batches of singly shuffled orders (docs/training.md).

    Read off the Trainer's own dataloader: each micro-batch holds each of its pairs twice, once per order
    (labels 0 and 1), so its labels are balanced."""
    from tinyrm.pairwise.data import ClozeCollator, ClozeDataset
    from tinyrm.pairwise.train import build_model
    from tinyrm.training.arguments import training_arguments
    from tinyrm.training.trainer import _make_trainer_classes

    config = tiny_config(tiny_bert, pairs_file, tmp_path / "o", micro_batch_size=6, batch_size=6,
                         group_by_length=group_by_length)
    rm = build_model(config)
    from tinyrm.data import load_pairs

    dataset = ClozeDataset(load_pairs(config.data).pairs, rm.encoder, "both", 0)
    class KeepPairs(ClozeCollator):  # the batch also says which pair (row of the pairs table) each row is
        def __call__(self, features):
            return {**super().__call__(features), "pair": [f["pair"] for f in features]}

    RewardTrainer, _, _ = _make_trainer_classes()
    trainer = RewardTrainer(model=rm.scorer(), args=training_arguments(config, tmp_path / "o", 1),
                            train_dataset=dataset, data_collator=KeepPairs(0))
    batches = list(trainer.get_train_dataloader())
    assert sorted(p for b in batches for p in b["pair"]) == sorted(list(range(len(dataset) // 2)) * 2)
    for batch in batches:
        assert batch["labels"].sum().item() * 2 == len(batch["labels"])  # as many "0" as "1" answers
        orders: dict[int, list[int]] = {}
        for pair, label in zip(batch["pair"], batch["labels"].tolist()):
            orders.setdefault(pair, []).append(label)
        assert all(sorted(labels) == [0, 1] for labels in orders.values()), orders  # each pair, both orders
        rows = {tuple(ids[m].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"].bool())}
        assert len(rows) == len(batch["labels"])  # two different sequences (the two orders) per pair

    with pytest.raises(ValueError, match="multiple of 2"):
        odd = tiny_config(tiny_bert, pairs_file, tmp_path / "odd", micro_batch_size=5, batch_size=5)
        RewardTrainer(model=rm.scorer(), args=training_arguments(odd, tmp_path / "odd", 1),
                      train_dataset=dataset, data_collator=ClozeCollator(0)).get_train_dataloader()


def test_max_pairs_trains_on_a_domain_stratified_sample(tiny_bert, pairs_file, tmp_path):
    from tinyrm.data import load_pairs
    from tinyrm.pairwise.data import load_training_pairs

    config = tiny_config(tiny_bert, pairs_file, tmp_path / "few", max_pairs=8, max_steps=-1, batch_size=4,
                         micro_batch_size=4)
    sample = load_training_pairs(config).pairs
    domains = {p.domain for p in load_pairs(config.data).pairs}
    assert len(sample) == 8 and {p.domain for p in sample} == domains  # every domain keeps a share
    result = train(config)
    assert (result.pairs, result.steps) == (8, 4)  # 8 pairs x 2 orders / 4 per step
