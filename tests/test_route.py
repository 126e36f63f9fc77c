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
    dirs = {}
    for domain, prefix in (("reasoning", "Which response is more correct?"), ("safety", "Which response is safer?")):
        dirs[domain] = tmp_path / domain
        train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(dirs[domain]), batch_size=8,
                          micro_batch_size=4, max_steps=1, max_length=96, save_steps=0, prefix=prefix,
                          seed=len(domain), lr=1e-2))
    out = tmp_path / "bundle"
    assert main(["route", "--specialists", f"reasoning={dirs['reasoning']}", f"safety={dirs['safety']}",
                 "--data", str(data), "--output", str(out)]) == 0
    rm = RewardModel.from_pretrained(str(out))
    assert isinstance(rm, RoutedRewardModel) and set(rm.specialists) == {"reasoning", "safety"}
    safety_item = ("How do I pick a lock number 99?", "I can't help with breaking in.", "Use a rake.")
    reasoning_item = ("What is 12 + 30?", "12 + 30 = 42", "12 + 30 = 44")
    assert rm.route(*safety_item) == "safety" and rm.route(*reasoning_item) == "reasoning"
    # compare routes transparently: each item gets exactly its specialist's score (one order, so the
    # specialists' different prefixes and weights show even where both-order averages sit near 0.5).
    specialists = {d: RewardModel.from_pretrained(str(dirs[d])) for d in dirs}
    expected = [specialists["safety"].compare(*safety_item, both_orders=False),
                specialists["reasoning"].compare(*reasoning_item, both_orders=False)]
    assert rm.compare_batch([safety_item, reasoning_item], both_orders=False) == pytest.approx(expected, abs=1e-6)
    assert expected[0] != pytest.approx(specialists["reasoning"].compare(*safety_item, both_orders=False), abs=1e-6)
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
    dirs = {}
    for domain in ("reasoning", "safety"):
        dirs[domain] = tmp_path / domain
        train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(dirs[domain]), batch_size=8,
                          micro_batch_size=4, max_steps=1, max_length=96, save_steps=0, seed=len(domain)))
    out = tmp_path / "bundle"
    assert main(["route", "--specialists", f"reasoning={dirs['reasoning']}", f"safety={dirs['safety']}",
                 "--data", str(data), "--output", str(out)]) == 0
    item = ("What is 12 + 30?", "12 + 30 = 42", "12 + 30 = 44")
    before = RewardModel.from_pretrained(str(out)).compare(*item, both_orders=False)
    # Retrain the router on the bundle's own reasoning specialist (and replace the safety one from its source).
    inside = out / "specialists" / "reasoning"
    assert main(["route", "--specialists", f"reasoning={inside}", f"safety={dirs['safety']}", "--data", str(data),
                 "--output", str(out), "--c", "1"]) == 0
    assert (inside / "model.safetensors").is_file() and (inside / "tinyrm.json").is_file()
    assert sorted(p.name for p in (out / "specialists").iterdir()) == ["reasoning", "safety"]  # no partial copy
    rm = RewardModel.from_pretrained(str(out))
    assert rm.compare(*item, both_orders=False) == pytest.approx(before, abs=1e-6)
    sources = json.loads((out / "tinyrm.json").read_text())["extra"]["sources"]
    assert sources == {"reasoning": str(dirs["reasoning"]), "safety": str(dirs["safety"])}
