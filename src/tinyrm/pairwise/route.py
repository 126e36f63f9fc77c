"""A routed generalist: a small domain classifier sends each comparison to a specialist.

The router is TF-IDF + logistic regression (scikit-learn) trained on the ``domain`` field of the
specialists' training pairs. It is stored as plain JSON (vocabulary, idf, coefficients), never
pickled, so loading a bundle runs no code. The bundle folder holds ``tinyrm.json`` with objective
``route``, ``router.json`` and a copy of each specialist under ``specialists/<domain>/``;
``tinyrm.load(bundle)`` (and ``RewardModel.from_pretrained(bundle)``) returns a :class:`RoutedRewardModel`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import CONFIG_FILE, RewardConfig
from ..data import PreferencePair, load_pairs
from ..model_card import write_card
from ..temperature import calibrate_output, saved_temperature, wants_calibration
from .model import RewardModel
from .rank import best_of_n, rank

ROUTER_FILE = "router.json"
SPECIALISTS_DIR = "specialists"
# Router features: TF-IDF of words and word pairs.
VECTORIZER_PARAMS = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1, "max_features": 50000,
                     "lowercase": True, "norm": "l2"}
_COPY_IGNORE = shutil.ignore_patterns("checkpoint-*", "metrics.jsonl", "runs")


def route_text(prompt: str, a: str, b: str) -> str:
    """Router input; the responses are sorted so both presentation orders route alike."""
    first, second = sorted((a, b))
    return f"{prompt}\n{first}\n{second}"


class DomainRouter:
    """TF-IDF + logistic regression over the specialists' domains, saved as JSON."""

    def __init__(self, vectorizer, classes: Sequence[str], coef: np.ndarray, intercept: np.ndarray):
        self.vectorizer = vectorizer
        self.classes = list(classes)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], c: float = 10.0, seed: int = 0) -> DomainRouter:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vectorizer = TfidfVectorizer(**VECTORIZER_PARAMS)
        features = vectorizer.fit_transform(texts)
        # Balanced classes: the safety files outnumber the others several times over.
        classifier = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
        classifier.fit(features, list(labels))
        return cls(vectorizer, [str(x) for x in classifier.classes_], classifier.coef_, classifier.intercept_)

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.vectorizer.transform(texts) @ self.coef.T) + self.intercept

    def predict(self, texts: Sequence[str]) -> list[str]:
        if not texts:
            return []
        scores = self.decision(texts)
        if len(self.classes) == 2:  # binary logistic regression keeps one row of coefficients
            return [self.classes[int(s > 0)] for s in scores[:, 0]]
        return [self.classes[i] for i in scores.argmax(axis=1)]

    def to_dict(self) -> dict:
        vocabulary = {term: int(index) for term, index in self.vectorizer.vocabulary_.items()}
        return {"kind": "tfidf-logreg", "params": {**VECTORIZER_PARAMS, "ngram_range": list(VECTORIZER_PARAMS[
            "ngram_range"])}, "vocabulary": vocabulary, "idf": self.vectorizer.idf_.tolist(),
            "classes": self.classes, "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> DomainRouter:
        from sklearn.feature_extraction.text import TfidfVectorizer

        params = dict(data["params"])
        params["ngram_range"] = tuple(params["ngram_range"])
        params.pop("max_features", None)  # the vocabulary is fixed below
        vectorizer = TfidfVectorizer(**params, vocabulary=data["vocabulary"])
        vectorizer.idf_ = np.asarray(data["idf"], dtype=np.float64)
        return cls(vectorizer, data["classes"], np.asarray(data["coef"]), np.asarray(data["intercept"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DomainRouter:
        return cls.from_dict(json.loads(Path(path).read_text()))


class RoutedRewardModel:
    """Scores like a RewardModel; each comparison goes to the specialist its domain picks."""

    def __init__(self, router: DomainRouter, specialists: dict[str, RewardModel], config: RewardConfig,
                 name: str = "route"):
        missing = sorted(set(router.classes) - set(specialists))
        if missing:
            raise ValueError(f"router predicts domain(s) {missing} with no specialist")
        self.router = router
        self.specialists = specialists
        self.config = config
        self.name = name
        first = next(iter(specialists.values()))
        self.tokenizer = first.tokenizer  # for callers that budget tokens; specialists share a backbone family
        self.device = first.device
        self.calibrated = True  # False: raw probabilities, the specialists' included (tinyrm.temperature)

    def route(self, prompt: str, a: str, b: str) -> str:
        return self.router.predict([route_text(prompt, a, b)])[0]

    def route_batch(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        return self.router.predict([route_text(*item) for item in items])

    def compare_batch(self, items: Iterable[tuple[str, str, str]], batch_size: int = 32,
                      both_orders: bool | None = None, calibrated: bool | None = None) -> list[float]:
        """Each item's specialist's P(a better). A bundle calibrated as a whole (``tinyrm calibrate`` on
        the bundle) scales the specialists' raw P by its own temperature; otherwise each specialist applies
        its own, if it has one. ``calibrated=False``: raw P throughout."""
        items = list(items)
        wanted = wants_calibration(self, calibrated)
        own = saved_temperature(self.config) is not None
        routes = self.route_batch(items)
        probs = [0.0] * len(items)
        for domain, specialist in self.specialists.items():
            idx = [i for i, r in enumerate(routes) if r == domain]
            if idx:
                scores = specialist.compare_batch([items[i] for i in idx], batch_size=batch_size,
                                                  both_orders=both_orders, calibrated=wanted and not own)
                for i, p in zip(idx, scores):
                    probs[i] = p
        return calibrate_output(self, probs, wanted)

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None,
                calibrated: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)], both_orders=both_orders, calibrated=calibrated)[0]

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "knockout", batch_size: int = 32):
        return rank(self, prompt, candidates, method=method, batch_size=batch_size)

    def best_of_n(self, prompt: str, candidates: Sequence[str], **kw) -> int:
        return best_of_n(self, prompt, candidates, **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, **overrides) -> RoutedRewardModel:
        """A saved bundle; ``overrides`` go to every specialist (each loads as its own kind)."""
        path = Path(path)
        config = RewardConfig.load(path)
        if config.objective != "route" or "specialists" not in config.extra:
            raise ValueError(f"{path}: objective {config.objective!r} is not a route bundle (build one with "
                             "`tinyrm route`; tinyrm.load opens any saved folder as its own kind)")
        specialists = {
            domain: RewardModel.from_pretrained(str(path / rel), device=device, **overrides)
            for domain, rel in config.extra["specialists"].items()
        }
        return cls(DomainRouter.load(path / config.extra["router"]), specialists, config, name=str(path))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for domain, specialist in self.specialists.items():
            specialist.save_pretrained(directory / SPECIALISTS_DIR / domain)
        self.router.save(directory / ROUTER_FILE)
        self.config.save(directory)
        write_card(directory, self.config)



@dataclass
class RouteConfig:
    specialists: dict[str, str]  # domain -> model folder
    data: list[str] = field(default_factory=list)  # pairs with a ``domain`` field
    output: str = "runs/route"
    c: float = 10.0  # inverse regularisation of the logistic regression
    seed: int = 0


@dataclass
class RouteReport:
    output: str
    counts: dict[str, int]
    train_accuracy: float
    skipped_other_domains: int


def parse_specialists(specs: Sequence[str]) -> dict[str, str]:
    """``["chat=DIR", ...]`` -> ``{"chat": "DIR"}`` with clear errors."""
    result: dict[str, str] = {}
    for spec in specs:
        domain, sep, directory = spec.partition("=")
        if not sep or not domain or not directory:
            raise ValueError(f"--specialists: expected DOMAIN=DIR, got {spec!r}")
        if domain in result:
            raise ValueError(f"--specialists: domain {domain!r} given twice")
        result[domain] = directory
    if len(result) < 2:
        raise ValueError("--specialists: routing needs at least two specialists")
    return result


def routing_pairs(pairs: Sequence[PreferencePair], domains: Iterable[str]) -> tuple[list[PreferencePair], int]:
    wanted = set(domains)
    kept = [p for p in pairs if p.domain in wanted]
    return kept, len(pairs) - len(kept)


def copy_specialist(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, replacing what is there only once the copy is complete."""
    if target.exists() and source.resolve() == target.resolve():
        return  # rebuilding a bundle from its own specialists: the folder is already in place
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():  # left by an interrupted earlier build
        shutil.rmtree(partial)
    shutil.copytree(source, partial, ignore=_COPY_IGNORE)
    if target.exists():
        # The source may live inside the old target (a subfolder of it); it is copied by now.
        shutil.rmtree(target)
    partial.rename(target)


def build_route(config: RouteConfig) -> RouteReport:
    """Train the router on ``config.data`` and write the bundle to ``config.output``."""
    for domain, directory in config.specialists.items():
        if not (Path(directory) / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"specialist {domain}: {directory} is not a tinyrm model folder")
    if not config.data:
        raise ValueError("--data FILE...: the router needs the specialists' training pairs (with 'domain')")
    pairs, skipped = routing_pairs(load_pairs(config.data).pairs, config.specialists)
    counts = Counter(p.domain for p in pairs)
    empty = sorted(d for d in config.specialists if counts[d] == 0)
    if empty:
        raise ValueError(f"no training pair has domain {', '.join(map(repr, empty))}; the router cannot learn it")
    texts = [route_text(p.prompt, p.chosen, p.rejected) for p in pairs]
    labels = [p.domain for p in pairs]
    router = DomainRouter.fit(texts, labels, c=config.c, seed=config.seed)
    accuracy = float(np.mean([a == b for a, b in zip(router.predict(texts), labels)]))

    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    specialists: dict[str, str] = {}
    sources = dict(config.specialists)
    earlier = RewardConfig.load(output).extra.get("sources", {}) if (output / CONFIG_FILE).is_file() else {}
    for domain, directory in config.specialists.items():
        target = output / SPECIALISTS_DIR / domain
        if target.exists() and Path(directory).resolve() == target.resolve() and domain in earlier:
            sources[domain] = earlier[domain]  # rebuilt in place: keep naming where it came from
        copy_specialist(Path(directory), target)
        specialists[domain] = f"{SPECIALISTS_DIR}/{domain}"
    router.save(output / ROUTER_FILE)
    report = RouteReport(output=str(output), counts=dict(sorted(counts.items())), train_accuracy=round(accuracy, 4),
                         skipped_other_domains=skipped)
    bundle = RewardConfig(objective="route", base_model=None, extra={
        "specialists": specialists, "router": ROUTER_FILE, "sources": sources,
        "router_report": asdict(report),
    })
    bundle.save(output)
    write_card(output, bundle)
    return report
