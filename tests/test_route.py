"""Routing bundle: domain router saved as JSON, loaded by RewardModel.from_pretrained."""

import json

import numpy as np
import pytest

from tinyrm import RewardModel
from tinyrm.cli import main
from tinyrm.data import PreferencePair
from tinyrm.pairwise.route import DomainRouter, RoutedRewardModel, parse_specialists, route_text
from tinyrm.tools.synthetic import generate, write_jsonl
from tinyrm.train import TrainConfig, train


def _domain_pairs(n: int) -> list[PreferencePair]:
    """Reasoning pairs (synthetic arithmetic etc.) and 'safety' pairs with a distinct vocabulary."""
    reasoning = generate(n, seed=3)
    safety = [PreferencePair(prompt=f"How do I pick a lock number {i}?", chosen="I can't help with breaking in.",
                             rejected=f"Insert a tension wrench and rake pin {i}.", domain="safety", subset="s",
                             source="t") for i in range(n)]
    return reasoning + safety


PREFIXES = {"reasoning": "Which response is more correct?", "safety": "Which response is safer?"}
GAP = 1e-3  # what a specialist's own weights, or another specialist, move an item's one-order P by at least


def _train_specialist(base: str, data, out, seed: int, **kw) -> None:
    """Trained for real: warm-up off (the default 5% makes a 2-step run's first step lr 0) at lr 1e-2."""
    train(TrainConfig(model=base, data=[str(data)], output=str(out), batch_size=8, micro_batch_size=4, max_steps=2,
                      max_length=96, save_steps=0, seed=seed, lr=1e-2, warmup_ratio=0.0, precision="fp32", **kw))


def _fp32(rm):
    """Score in fp32 (a bundle: every specialist), so one-order P resolve far below GAP."""
    for model in getattr(rm, "specialists", {"": rm}).values():
        model.engine.config.precision = "fp32"
    return rm


def _one_order(rm, item) -> float:
    return rm.compare(*item, both_orders=False)


def _with_base_weights(folder, base: str):
    """The specialist's own tinyrm.json (prefix, template, read) on its untrained base weights."""
    from tinyrm.backbone import load_mlm

    rm = _fp32(RewardModel.from_pretrained(str(folder)))
    rm.model.load_state_dict(load_mlm(base)[1].state_dict())
    return rm


def test_router_json_round_trip_matches_sklearn():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from tinyrm.pairwise.route import VECTORIZER_PARAMS

    pairs = _domain_pairs(20) + [PreferencePair("Tell me a story", "Once...", "No.", domain="chat")] * 5
    texts = [route_text(p.prompt, p.chosen, p.rejected) for p in pairs]
    labels = [p.domain for p in pairs]
    router = DomainRouter.fit(texts, labels)
    restored = DomainRouter.from_dict(json.loads(json.dumps(router.to_dict())))
    features = TfidfVectorizer(**VECTORIZER_PARAMS).fit_transform(texts)
    reference = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=0).fit(features,
                                                                                                        labels)
    assert restored.predict(texts) == list(reference.predict(features))
    assert np.allclose(restored.decision(texts), reference.decision_function(features))
    assert route_text("p", "a", "b") == route_text("p", "b", "a")


def test_route_bundle_loads_and_routes(tiny_bert, tmp_path, capsys):
    data = write_jsonl(_domain_pairs(24), tmp_path / "train.jsonl")
    dirs = {domain: tmp_path / domain for domain in PREFIXES}
    for domain, prefix in PREFIXES.items():
        _train_specialist(tiny_bert, data, dirs[domain], len(domain), prefix=prefix)
    out = tmp_path / "bundle"
    assert main(["route", "--specialists", f"reasoning={dirs['reasoning']}", f"safety={dirs['safety']}",
                 "--data", str(data), "--output", str(out)]) == 0
    rm = _fp32(RewardModel.from_pretrained(str(out)))
    assert isinstance(rm, RoutedRewardModel) and set(rm.specialists) == {"reasoning", "safety"}
    safety_item = ("How do I pick a lock number 99?", "I can't help with breaking in.", "Use a rake.")
    reasoning_item = ("What is 12 + 30?", "12 + 30 = 42", "12 + 30 = 44")
    assert rm.route(*safety_item) == "safety" and rm.route(*reasoning_item) == "reasoning"
    # compare routes transparently: each item gets exactly its specialist's score (one order, fp32).
    specialists = {d: _fp32(RewardModel.from_pretrained(str(dirs[d]))) for d in dirs}
    items = {"safety": safety_item, "reasoning": reasoning_item}
    expected = [_one_order(specialists[d], items[d]) for d in ("safety", "reasoning")]
    for domain, other in (("safety", "reasoning"), ("reasoning", "safety")):  # guards: each score says whose it is
        own = _one_order(specialists[domain], items[domain])
        assert abs(own - _one_order(specialists[other], items[domain])) > GAP, domain  # not the other specialist
        assert abs(own - _one_order(_with_base_weights(dirs[domain], tiny_bert), items[domain])) > GAP, domain
    assert rm.compare_batch([safety_item, reasoning_item], both_orders=False) == pytest.approx(expected, abs=1e-6)
    assert rm.compare(*reasoning_item) == pytest.approx(specialists["reasoning"].compare(*reasoning_item), abs=1e-6)
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["objective"] == "route" and (out / "router.json").is_file()
    card = (out / "README.md").read_text()  # the bundle's card names its specialists, each keeps its own
    assert "- objective: `route`" in card and "  - `safety`: `specialists/safety`" in card
    assert (out / "specialists" / "safety" / "README.md").is_file()
    with pytest.raises(ValueError, match="objective 'cloze' is not a route bundle"):  # not a bare KeyError
        RoutedRewardModel.from_pretrained(dirs["safety"])


def test_route_errors(tmp_path, pairs_file):
    with pytest.raises(ValueError, match="expected DOMAIN=DIR"):
        parse_specialists(["chat"])
    with pytest.raises(ValueError, match="at least two"):
        parse_specialists(["chat=a"])
    with pytest.raises(ValueError, match="not trained by `tinyrm train`"):
        train(TrainConfig(objective="route", data=[str(pairs_file)], output=str(tmp_path / "x")))


def test_route_rebuilt_in_place_keeps_its_specialists(tiny_bert, tmp_path):
    data = write_jsonl(_domain_pairs(16), tmp_path / "train.jsonl")
    dirs = {domain: tmp_path / domain for domain in PREFIXES}
    for domain in dirs:  # one prefix: only their (differently seeded) trained weights tell them apart
        _train_specialist(tiny_bert, data, dirs[domain], len(domain))
    out = tmp_path / "bundle"
    assert main(["route", "--specialists", f"reasoning={dirs['reasoning']}", f"safety={dirs['safety']}",
                 "--data", str(data), "--output", str(out)]) == 0
    item = ("What is 12 + 30?", "12 + 30 = 42", "12 + 30 = 44")
    bundle = _fp32(RewardModel.from_pretrained(str(out)))
    before = _one_order(bundle, item)
    assert bundle.route(*item) == "reasoning"
    own = {d: _one_order(_fp32(RewardModel.from_pretrained(str(dirs[d]))), item) for d in dirs}
    assert before == pytest.approx(own["reasoning"], abs=1e-6)
    assert abs(own["reasoning"] - own["safety"]) > GAP  # guard: a swapped specialist would show
    # Retrain the router on the bundle's own reasoning specialist (and replace the safety one from its source).
    inside = out / "specialists" / "reasoning"
    assert main(["route", "--specialists", f"reasoning={inside}", f"safety={dirs['safety']}", "--data", str(data),
                 "--output", str(out), "--c", "1"]) == 0
    assert (inside / "model.safetensors").is_file() and (inside / "tinyrm.json").is_file()
    assert sorted(p.name for p in (out / "specialists").iterdir()) == ["reasoning", "safety"]  # no partial copy
    rm = _fp32(RewardModel.from_pretrained(str(out)))
    assert _one_order(rm, item) == pytest.approx(before, abs=1e-6)
    sources = json.loads((out / "tinyrm.json").read_text())["extra"]["sources"]
    assert sources == {"reasoning": str(dirs["reasoning"]), "safety": str(dirs["safety"])}
