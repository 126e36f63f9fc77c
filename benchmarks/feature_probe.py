"""Feature probe: how much dev/hhh signal the frozen backbone carries, and which training files carry it.

The paradigm benchmark fine-tunes the whole encoder; at a CPU budget its models barely move off
P = 0.5 and their dev score is mostly a length cue (docs/training.md). This benchmark asks the
question under it without any fine-tuning: encode the prompt and each response once with the
frozen backbone as a sentence-transformers model (its own pooling, normalised), then

* zero-shot cues: "longer wins", "the response closer to the prompt (cosine) wins", and the two
  added with weights fixed from the training sample's spread (nothing fitted to the eval set);
* linear probes: a Bradley-Terry logistic regression (scikit-learn, no intercept, both orders) on
  the difference of the two responses' embeddings, trained on the stratified sample, on each
  source alone, and one per domain applied to the eval pairs of that domain.

A probe is a lower bound on what fine-tuning can extract, not an upper one, but when no linear
read of the features beats the length cue, a few hundred CPU steps of fine-tuning rarely do.

    python benchmarks/feature_probe.py                                   # 2,000 stratified pairs, ~4 min on 2 cores
    python benchmarks/feature_probe.py --pairs 4000 --output runs/feature-probe/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paradigms import SHARED, wilson_interval  # noqa: E402


@dataclass
class ProbeConfig:
    train: list[str] = field(default_factory=lambda: [str(SHARED / "train" / "*.jsonl")])
    eval: list[str] = field(default_factory=lambda: [str(SHARED / "dev" / "hhh.jsonl")])
    model: str = "default"
    pairs: int = 2000  # stratified over the domains, as the paradigm benchmark samples them
    max_length: int = 256  # tokens per text (prompt and each response are encoded on their own)
    prompt_chars: int = 2000  # the end of a long transcript is the part the responses answer
    c: float = 1.0  # inverse L2 strength of the logistic regression
    seed: int = 42
    batch_size: int = 32
    output: str = "runs/feature-probe/report.json"


@dataclass
class Encoded:
    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_len: np.ndarray  # characters
    rejected_len: np.ndarray


def encode_pairs(model, pairs, config: ProbeConfig, tag: str) -> Encoded:
    start = time.perf_counter()

    def emb(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=config.batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    out = Encoded(emb([p.prompt[-config.prompt_chars:] for p in pairs]), emb([p.chosen for p in pairs]),
                  emb([p.rejected for p in pairs]), np.array([len(p.chosen) for p in pairs], float),
                  np.array([len(p.rejected) for p in pairs], float))
    print(f"{tag}: {len(pairs)} pairs encoded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


def fit_probe(enc: Encoded, rows: np.ndarray, c: float) -> np.ndarray:
    """Bradley-Terry weights w: P(chosen better) = sigmoid(w . (e_chosen - e_rejected))."""
    from sklearn.linear_model import LogisticRegression

    diff = enc.chosen[rows] - enc.rejected[rows]
    x = np.concatenate([diff, -diff])  # both orders: no intercept, no position bias
    y = np.r_[np.ones(len(diff)), np.zeros(len(diff))]
    return LogisticRegression(C=c, fit_intercept=False, max_iter=5000).fit(x, y).coef_[0]


def score(margins: np.ndarray, eval_pairs) -> dict:
    """tinyrm's results dict (accuracy, per subset and domain; a tie counts as wrong) plus a 95% interval."""
    from scipy.special import expit

    from tinyrm.evaluation.results import score_pairs

    # P(chosen better) under the Bradley-Terry reading; a zero margin is 0.5, a tie.
    results = score_pairs(expit(margins).tolist(), eval_pairs, "feature-probe")
    correct = round(results["accuracy"] * results["n"])
    return {**results, "ci95": wilson_interval(correct, results["n"])}


def cues(enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: cosine(prompt, chosen) - cosine(prompt, rejected), and log-length difference."""
    cosine = (enc.prompt * enc.chosen).sum(1) - (enc.prompt * enc.rejected).sum(1)
    return cosine, np.log1p(enc.chosen_len) - np.log1p(enc.rejected_len)


def run(config: ProbeConfig) -> dict:
    from sentence_transformers import SentenceTransformer

    from tinyrm.backbone import resolve_model_path
    from tinyrm.data import load_pairs, stratified_sample

    train_pairs = stratified_sample(load_pairs(config.train).pairs, config.pairs, config.seed)
    eval_pairs = load_pairs(config.eval).pairs
    model = SentenceTransformer(resolve_model_path(config.model), device="cpu")
    model.max_seq_length = config.max_length
    train_enc = encode_pairs(model, train_pairs, config, "train")
    eval_enc = encode_pairs(model, eval_pairs, config, "eval")
    eval_diff = eval_enc.chosen - eval_enc.rejected

    rows: list[dict] = []
    train_cos, train_len = cues(train_enc)
    eval_cos, eval_len = cues(eval_enc)
    for name, margins, n in [
        ("zero-shot: longer response wins", eval_len, 0),
        ("zero-shot: response closer to the prompt (cosine) wins", eval_cos, 0),
        # Weights from the training sample's spread, so nothing here is fitted to the eval pairs.
        ("zero-shot: cosine + length, each scaled by its training-sample std",
         eval_cos / train_cos.std() + eval_len / train_len.std(), 0),
    ]:
        rows.append({"name": name, "train_pairs": n, **score(margins, eval_pairs)})
    # How each cue points inside the training data: the sign each source would teach.
    sources = np.array([p.source or "" for p in train_pairs])
    domains = np.array([p.domain or "" for p in train_pairs])
    by_source = {s: {"pairs": int((sources == s).sum()),
                     "chosen_longer": round(float((train_len[sources == s] > 0).mean()), 3),
                     "chosen_closer": round(float((train_cos[sources == s] > 0).mean()), 3)}
                 for s in sorted(set(sources))}

    everything = np.arange(len(train_pairs))
    rows.append({"name": "probe: the whole stratified sample", "train_pairs": len(everything),
                 **score(eval_diff @ fit_probe(train_enc, everything, config.c), eval_pairs)})
    for source in sorted(set(sources)):
        picked = np.flatnonzero(sources == source)
        weights = fit_probe(train_enc, picked, config.c)
        rows.append({"name": f"probe: {source} only", "train_pairs": len(picked),
                     **score(eval_diff @ weights, eval_pairs)})
    eval_domains = np.array([p.domain or "" for p in eval_pairs])
    per_domain = {d: fit_probe(train_enc, np.flatnonzero(domains == d), config.c) for d in set(domains)}
    routed = np.array([eval_diff[i] @ per_domain[d] if d in per_domain else 0.0
                       for i, d in enumerate(eval_domains)])
    rows.append({"name": "probe: one per domain, each eval pair scored by its domain's probe",
                 "train_pairs": len(everything), **score(routed, eval_pairs)})
    return {"config": asdict(config), "eval_pairs": len(eval_pairs), "rows": rows, "train_sources": by_source}


def markdown(report: dict) -> str:
    subsets = sorted({k for row in report["rows"] for k in row["subsets"]})
    lines = ["| read of the frozen features | train pairs | accuracy | 95% CI | " + " | ".join(subsets) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(subsets)]
    for row in report["rows"]:
        low, high = row["ci95"]
        by_subset = " | ".join(f"{row['subsets'][s]['accuracy']:.2f}" for s in subsets)
        lines.append(f"| {row['name']} | {row['train_pairs'] or '–'} | {row['accuracy']:.3f} | "
                     f"{low:.3f}–{high:.3f} | {by_subset} |")
    lines += ["", "| training source | pairs | chosen longer | chosen closer to the prompt |", "|---|---:|---:|---:|"]
    for source, info in report["train_sources"].items():
        lines.append(f"| {source} | {info['pairs']} | {info['chosen_longer']:.2f} | {info['chosen_closer']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> ProbeConfig:
    d = ProbeConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs="+", default=d.train, metavar="FILE", help="training JSONL files/globs")
    p.add_argument("--eval", nargs="+", default=d.eval, metavar="FILE", help="evaluation JSONL files")
    p.add_argument("--model", default=d.model)
    p.add_argument("--pairs", type=int, default=d.pairs, help="stratified training sample size")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--c", type=float, default=d.c, help="inverse L2 strength of the probes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--output", default=d.output)
    return ProbeConfig(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    from tinyrm.data import DataError

    config = parse_args(argv)
    try:
        report = run(config)
    except (DataError, OSError) as exc:  # a missing or malformed file: say which, stop cleanly
        print(f"error: {exc} (the shared data lives in ../shared/data)", file=sys.stderr)
        return 2
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nreport: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
