"""DoRA fold-in (scores agree within 1e-4) and weight averaging (with refusals)."""

import json

import pytest
import torch

from tinyrm import RewardModel
from tinyrm.backbone import base_state_dict
from tinyrm.cli import main
from tinyrm.tools.merge import (
    AverageConfig,
    IncompatibleCheckpoints,
    MergeDoraConfig,
    average_checkpoints,
    direct_scores,
    merge_dora,
)
from tinyrm.tools.synthetic import generate
from tinyrm.train import TrainConfig, train


def _train(model, data, out, **kw):
    config = dict(model=model, data=[str(data)], output=str(out), batch_size=8, micro_batch_size=4, max_steps=3,
                  max_length=96, save_steps=0, lr=5e-3, precision="fp32")
    config.update(kw)
    train(TrainConfig(**config))
    return out


def test_merge_dora_agrees_and_drops_the_adapter(tiny_model, pairs_file, tmp_path):
    dora = _train(tiny_model, pairs_file, tmp_path / "dora", dora_rank=8, freeze_layers=1, lr=5e-2)
    report = merge_dora(MergeDoraConfig(dora=str(dora), output=str(tmp_path / "merged"), n_pairs=16, repeats=1))
    assert report.max_abs_diff <= 1e-4 and report.n_pairs == 16
    merged = RewardModel.from_pretrained(str(tmp_path / "merged"))
    assert merged.config.adapter is None and not (tmp_path / "merged" / "adapter").exists()
    adapter = RewardModel.from_pretrained(str(dora))
    # The adapters really changed the scores (so agreement is not trivially between two base models).
    base_state = base_state_dict(adapter.model)
    merged_state = merged.model.state_dict()
    changed = [k for k, v in merged_state.items() if k in base_state and v.shape == base_state[k].shape
               and v.is_floating_point() and not torch.allclose(v, base_state[k])]
    assert changed
    items = [(p.prompt, p.chosen, p.rejected) for p in generate(8, seed=9)]
    # fp32 scores with the DoRA layers running unmerged vs the merged weights: equal within 1e-4 ...
    # (One order: a tiny random model's both-order average sits at 0.5 whatever the weights.)
    adapter_scores = direct_scores(adapter, items, both_orders=False)
    merged_scores = direct_scores(merged, items, both_orders=False)
    assert max(abs(x - y) for x, y in zip(adapter_scores, merged_scores)) <= 1e-4
    # ... while switching the adapters off moves them, so the agreement is not trivial.
    with adapter.model.disable_adapter():
        base_scores = direct_scores(adapter, items, both_orders=False)
    assert max(abs(x - y) for x, y in zip(adapter_scores, base_scores)) > 1e-4


def test_merge_dora_refuses_a_full_finetune(tiny_bert, pairs_file, tmp_path):
    full = _train(tiny_bert, pairs_file, tmp_path / "full", max_steps=1)
    with pytest.raises(ValueError, match="has no DoRA adapter"):
        merge_dora(MergeDoraConfig(dora=str(full), output=str(tmp_path / "m")))


def test_average_is_the_weighted_mean(tiny_bert, pairs_file, tmp_path):
    a = _train(tiny_bert, pairs_file, tmp_path / "a", seed=1)
    b = _train(tiny_bert, pairs_file, tmp_path / "b", seed=2, lr=1e-2)
    average_checkpoints(AverageConfig(checkpoints=[str(a), str(b)], output=str(tmp_path / "avg"), weights=[3, 1]))
    sa, sb, savg = (RewardModel.from_pretrained(str(d)).model.state_dict() for d in (a, b, tmp_path / "avg"))
    key = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.allclose(sa[key], sb[key])
    assert torch.allclose(savg[key], 0.75 * sa[key] + 0.25 * sb[key], atol=1e-6)
    saved = json.loads((tmp_path / "avg" / "tinyrm.json").read_text())
    assert saved["extra"]["weights"] == [0.75, 0.25]


def test_average_refuses_incompatible(tiny_bert, tiny_modernbert, pairs_file, tmp_path, capsys):
    bert = _train(tiny_bert, pairs_file, tmp_path / "bert", max_steps=1)
    modern = _train(tiny_modernbert, pairs_file, tmp_path / "modern", max_steps=1)
    dora = _train(tiny_bert, pairs_file, tmp_path / "dora", max_steps=1, dora_rank=4)
    with pytest.raises(IncompatibleCheckpoints, match="different backbone"):
        average_checkpoints(AverageConfig(checkpoints=[str(bert), str(modern)], output=str(tmp_path / "x")))
    with pytest.raises(IncompatibleCheckpoints, match="holds a DoRA adapter; fold it in first"):
        average_checkpoints(AverageConfig(checkpoints=[str(bert), str(dora)], output=str(tmp_path / "x")))
    # Through the CLI: one clear line, exit code 2, nothing written.
    assert main(["merge", "--average", str(bert), str(modern), "--output", str(tmp_path / "y")]) == 2
    assert "different backbone" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["merge", "--average", str(bert), str(bert), "--weights", "1", "--output", str(tmp_path / "z")]) == 2
    assert "got 1 weights for 2 checkpoints" in capsys.readouterr().err


def test_direct_scores_read_at_cls_like_the_engine(tiny_bert, pairs_file, tmp_path):
    cls_model = _train(tiny_bert, pairs_file, tmp_path / "cls", read="cls")
    rm = RewardModel.from_pretrained(str(cls_model), precision="fp32")
    assert rm.config.read == "cls"
    items = [(p.prompt, p.chosen, p.rejected) for p in generate(8, seed=9)]
    # merge --dora's check must score where the model reads, as every other scoring path does.
    assert direct_scores(rm, items, both_orders=False) == pytest.approx(rm.compare_batch(items, both_orders=False),
                                                                         abs=1e-5)


def test_average_refuses_different_scoring_settings(tiny_bert, pairs_file, tmp_path):
    from tinyrm.pairwise.route import RouteConfig, build_route

    mask = _train(tiny_bert, pairs_file, tmp_path / "mask", max_steps=1)
    cls_model = _train(tiny_bert, pairs_file, tmp_path / "cls", max_steps=1, read="cls")
    with pytest.raises(IncompatibleCheckpoints, match="read 'cls' differs from .*'s 'mask'") as error:
        average_checkpoints(AverageConfig(checkpoints=[str(mask), str(cls_model)], output=str(tmp_path / "x")))
    assert str(mask) in str(error.value) and str(cls_model) in str(error.value)
    tokens = _train(tiny_bert, pairs_file, tmp_path / "tokens", max_steps=1, answer_tokens=("no", "yes"))
    with pytest.raises(IncompatibleCheckpoints, match="answer_tokens"):
        average_checkpoints(AverageConfig(checkpoints=[str(mask), str(tokens)], output=str(tmp_path / "x")))
    # A route bundle listed first gets the objective error, not a transformers one about its missing config.json.
    bundle = tmp_path / "bundle"
    build_route(RouteConfig(specialists={"chat": str(mask), "reasoning": str(tokens)}, data=[str(pairs_file)],
                            output=str(bundle)))
    with pytest.raises(IncompatibleCheckpoints, match="objective 'route'; only cloze reward models"):
        average_checkpoints(AverageConfig(checkpoints=[str(bundle), str(mask)], output=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_average_keeps_trained_settings_and_its_card_says_so(tiny_bert, pairs_file, tmp_path):
    # Specialists trained with their own prefixes (the paper's WARM attempt) average; a plain masked LM
    # listed first imposes no settings, so the trained folders' read position and prefix are kept.
    safety = _train(tiny_bert, pairs_file, tmp_path / "safety", max_steps=1, read="cls",
                    prefix="Which response is safer?")
    reasoning = _train(tiny_bert, pairs_file, tmp_path / "reasoning", max_steps=1, read="cls",
                       prefix="Which response is more correct?")
    out = tmp_path / "avg"
    rm = average_checkpoints(AverageConfig(checkpoints=[tiny_bert, str(safety), str(reasoning)], output=str(out)))
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["read"] == "cls" and saved["prefix"] == "Which response is safer?"
    assert saved["extra"]["averaged_from"] == [tiny_bert, str(safety), str(reasoning)]
    assert saved["extra"]["differing_settings"]["prefix"] == {str(safety): "Which response is safer?",
                                                              str(reasoning): "Which response is more correct?"}
    assert rm.config.read == "cls" and "calibration" not in saved
    card = (out / "README.md").read_text()
    assert "Not trained by tinyrm" not in card
    assert f"- weights: the weighted average (`tinyrm merge --average`, no training since) of `{tiny_bert}` " \
           f"(0.333), `{safety}` (0.333), `{reasoning}` (0.333)" in card
    assert f"scoring settings (tinyrm.json) from `{safety}`" in card and "- prefix differed (the first kept): " in card
    assert card.index("## Training") < card.index("weighted average") < card.index("## Evaluation")
