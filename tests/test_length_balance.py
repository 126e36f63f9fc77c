"""--length-balance: the chosen response is the longer one in half of each domain's pairs, in every
micro-batch the Trainer draws (the batches are read off the Trainer's own dataloader)."""

import json
from collections import Counter

import pytest

from tinyrm.data import CHOSEN_LONGER, CHOSEN_SHORTER, length_balanced_indices, length_direction
from tinyrm.train import TrainConfig, train


def skewed_pairs(path, n_chat=30, n_safety=24):
    """chat: chosen longer in 2/3 of the pairs; safety: chosen shorter in 3/4; a few equal lengths."""
    rows = []
    for i in range(n_chat):
        long, short = f"a long and careful answer number {i}", f"short {i}"
        chosen, rejected = (long, short) if i % 3 else (short, long)
        rows.append({"prompt": f"chat question {i}", "chosen": chosen, "rejected": rejected, "domain": "chat"})
    for i in range(n_safety):
        long, short = f"here is exactly how to do the harmful thing {i}", f"I can't help {i}"
        chosen, rejected = (long, short) if i % 4 == 0 else (short, long)
        rows.append({"prompt": f"risky request {i}", "chosen": chosen, "rejected": rejected, "domain": "safety"})
    rows += [{"prompt": f"tie {i}", "chosen": "same", "rejected": "size", "domain": "chat"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_length_direction_counts_characters():
    assert length_direction("abcd", "abc") == CHOSEN_LONGER
    assert length_direction("ab", "abc") == CHOSEN_SHORTER
    assert length_direction("é" * 3, "abc") == 0  # characters, not bytes


def test_balanced_indices_hold_each_domain_half_and_half_in_couples():
    domains = ["a"] * 10 + ["b"] * 6 + ["a"] * 2
    directions = [1] * 7 + [-1] * 3 + [-1] * 5 + [1] * 1 + [0] * 2
    kept = length_balanced_indices(domains, directions, 0, seed=1)
    assert len(kept) == 2 * (3 + 1 + 1)  # a: 3 couples + 1 of equal lengths, b: 1 couple; surplus left out
    assert sum(directions[i] == 0 for i in kept) == 2
    for start in range(0, len(kept), 2):  # couples: one longer then one shorter (or two equal), same domain
        first, second = kept[start], kept[start + 1]
        assert (directions[first], directions[second]) in ((1, -1), (0, 0)) and domains[first] == domains[second]
    assert kept == length_balanced_indices(domains, directions, 0, seed=1)  # seeded
    sample = length_balanced_indices(domains, directions, 4, seed=1)  # n: n // 2 couples, a share per domain
    assert len(sample) == 4 and Counter(domains[i] for i in sample) == {"a": 2, "b": 2}
    assert Counter(directions[i] for i in sample)[1] == Counter(directions[i] for i in sample)[-1]
    with pytest.raises(ValueError, match="--max-pairs 1 with --length-balance"):  # 0 couples: say why, not "no pair"
        length_balanced_indices(domains, directions, 1, seed=1)


@pytest.mark.parametrize("max_pairs", [0, 16])
def test_every_batch_the_trainer_draws_is_length_balanced(tiny_bert, tmp_path, max_pairs):
    from tinyrm.pairwise.data import ClozeCollator, ClozeDataset, load_training_pairs, pair_group_size
    from tinyrm.pairwise.train import build_model
    from tinyrm.training.arguments import training_arguments
    from tinyrm.training.trainer import _make_trainer_classes

    rows = skewed_pairs(tmp_path / "skewed.jsonl")
    config = TrainConfig(model=tiny_bert, data=[str(tmp_path / "skewed.jsonl")], output=str(tmp_path / "o"),
                         batch_size=8, micro_batch_size=8, max_length=96, save_steps=0, precision="fp32",
                         length_balance=True, max_pairs=max_pairs)
    table = load_training_pairs(config)  # what train() reads
    pairs = table.pairs
    direction = [length_direction(p.chosen, p.rejected) for p in pairs]
    per_domain = Counter((p.domain, d) for p, d in zip(pairs, direction))
    assert per_domain[("chat", 1)] == per_domain[("chat", -1)] > 0
    assert per_domain[("safety", 1)] == per_domain[("safety", -1)] > 0
    if max_pairs:
        assert len(pairs) == max_pairs
    else:  # every minority pair is kept (chat 10 shorter, safety 6 longer), and 2 of the 3 equal-length ones
        assert (per_domain[("chat", -1)], per_domain[("safety", 1)], per_domain[("chat", 0)]) == (10, 6, 2)
    assert all(any(r["chosen"] == p.chosen and r["prompt"] == p.prompt for r in rows) for p in pairs)

    rm = build_model(config)
    dataset = ClozeDataset(table, rm.encoder, "both", 0)
    dataset.group_size = pair_group_size(dataset.group_size, config)  # as train() sets it
    assert dataset.group_size == 4
    RewardTrainer, _, _ = _make_trainer_classes()
    trainer = RewardTrainer(model=rm.scorer(), args=training_arguments(config, tmp_path / "o", 1),
                            train_dataset=dataset, data_collator=RecordingCollator(ClozeCollator(0)))
    batches = [batch["labels"] for batch in trainer.get_train_dataloader()]
    drawn = trainer.data_collator.pairs
    assert sum(len(b) for b in batches) == len(dataset) and len(drawn) == len(batches)
    for batch_pairs in drawn:
        counts = Counter(direction[p] for p in batch_pairs)
        assert counts[CHOSEN_LONGER] == counts[CHOSEN_SHORTER]  # balanced within every micro-batch


class RecordingCollator:
    """The real collator, noting which table rows (pairs) each batch holds."""

    def __init__(self, inner):
        self.inner, self.pairs = inner, []

    def __call__(self, features):
        self.pairs.append([f["pair"] for f in features])
        return self.inner(features)


def test_length_balance_is_saved_with_the_model(tiny_bert, tmp_path):
    skewed_pairs(tmp_path / "skewed.jsonl")
    out = tmp_path / "bal"
    result = train(TrainConfig(model=tiny_bert, data=[str(tmp_path / "skewed.jsonl")], output=str(out),
                               batch_size=8, micro_batch_size=8, max_steps=2, max_length=96, save_steps=0,
                               precision="fp32", length_balance=True))
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["extra"]["train"]["length_balance"] is True
    assert result.steps == 2


def test_micro_batch_must_hold_whole_couples(tiny_bert, tmp_path):
    skewed_pairs(tmp_path / "skewed.jsonl")
    with pytest.raises(ValueError, match="length-balance"):
        train(TrainConfig(model=tiny_bert, data=[str(tmp_path / "skewed.jsonl")], output=str(tmp_path / "x"),
                          batch_size=6, micro_batch_size=6, max_steps=1, max_length=96, save_steps=0,
                          precision="fp32", length_balance=True))


def test_data_with_one_direction_only_is_a_clear_error(tiny_bert, tmp_path):
    from tinyrm.data import DataError

    path = tmp_path / "longer.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a longer answer", "rejected": "short"}) + "\n"
                            for i in range(6)))
    with pytest.raises(DataError, match="--no-length-balance"):
        train(TrainConfig(model=tiny_bert, data=[str(path)], output=str(tmp_path / "x"), batch_size=4,
                          micro_batch_size=4, max_steps=1, max_length=64, save_steps=0, precision="fp32"))
