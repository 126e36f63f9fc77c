"""Per-domain instruction prefixes (the paper's all-at-once recipe): training, saving, scoring."""

import json

import pytest

from tinyrm import RewardModel
from tinyrm.cli import build_parser
from tinyrm.cli.core import train_config_from_args
from tinyrm.config import RewardConfig
from tinyrm.data import PreferencePair, load_pairs
from tinyrm.evaluation.evaluate import evaluate_pairs
from tinyrm.inference.engine import CachingClozeEncoder
from tinyrm.pairwise.data import ClozeDataset
from tinyrm.pairwise.train import build_model
from tinyrm.prompt import ALL_AT_ONCE_PREFIXES, DEFAULT_PREFIX, ClozeEncoder, get_template
from tinyrm.train import TrainConfig, train
from tinyrm.training.recipes import load_recipe

SAFER, CORRECT = "Which response is safer?", "Which response is more correct?"
MAPPING = {"safety": SAFER, "reasoning": CORRECT}


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def encoder(tokenizer, prefix=DEFAULT_PREFIX, max_length=96, cls=ClozeEncoder):
    return cls(tokenizer, get_template("flan"), prefix=prefix, max_length=max_length)


def test_prefix_override_is_the_same_as_an_encoder_with_that_prefix(tokenizer):
    plain, safer = encoder(tokenizer), encoder(tokenizer, SAFER)
    long = "word " * 300  # the truncating path as well as the joint one
    for args in (("q", "a", "b"), ("q " * 50, long, "b"), (long, "a", long)):
        assert plain.encode(*args, prefix=SAFER) == safer.encode(*args)
        # The default stays what it was: no override, None and the encoder's own prefix agree.
        assert plain.encode(*args) == plain.encode(*args, prefix=None) == plain.encode(*args, prefix=DEFAULT_PREFIX)
    assert plain.encode("q", "a", "b", prefix=SAFER) != plain.encode("q", "a", "b")


def test_dataset_encodes_each_row_with_its_domain_prefix(tokenizer):
    pairs = [
        PreferencePair("Is it safe?", "No, be careful.", "Sure.", domain="safety"),
        PreferencePair("2 + 2?", "4", "5", domain="reasoning"),
        PreferencePair("Say hi.", "Hi!", "Go away.", domain=None),
        PreferencePair("Tell a joke.", "A joke.", "No.", domain="chat"),  # not in the mapping
    ]
    enc = encoder(tokenizer)
    dataset = ClozeDataset(pairs, enc, "both", seed=0, domain_prefixes=MAPPING)
    expected = [SAFER, CORRECT, DEFAULT_PREFIX, DEFAULT_PREFIX]
    for i, (pair, prefix) in enumerate(zip(pairs, expected)):
        reference = encoder(tokenizer, prefix)
        (first, label0), (second, label1) = dataset.example(2 * i), dataset.example(2 * i + 1)
        assert first == reference.encode(pair.prompt, pair.chosen, pair.rejected) and label0 == 0
        assert second == reference.encode(pair.prompt, pair.rejected, pair.chosen) and label1 == 1
    assert dataset.example(0)[0].input_ids != dataset.example(2)[0].input_ids
    # Without a mapping every row gets the encoder's prefix, as before.
    plain = ClozeDataset(pairs, enc, "both", seed=0)
    assert [plain.example(i)[0] for i in range(len(plain))] == [e for p in pairs for e in (
        enc.encode(p.prompt, p.chosen, p.rejected), enc.encode(p.prompt, p.rejected, p.chosen))]


def test_all_at_once_recipe_carries_the_papers_domain_prefixes():
    recipe = load_recipe("large-all-at-once")
    expected = {"chat": "Select the best response.", "reasoning": CORRECT, "safety": SAFER}
    assert recipe.config["domain_prefixes"] == expected == ALL_AT_ONCE_PREFIXES
    assert recipe.config["prefix"] == "Select the best response."
    assert TrainConfig(**recipe.config).domain_prefixes == expected
    config = train_config_from_args(build_parser().parse_args(
        ["train", "--recipe", "large-all-at-once", "--data", "x.jsonl", "--output", "o"]))
    assert config.domain_prefixes == expected and config.freeze_layers == 5


def test_domain_prefixes_flag(capsys):
    def parse(*argv):
        return train_config_from_args(build_parser().parse_args(["train", "--data", "x", "--output", "o", *argv]))

    assert parse().domain_prefixes is None
    assert parse("--domain-prefixes", json.dumps(MAPPING)).domain_prefixes == MAPPING
    overridden = parse("--recipe", "large-all-at-once", "--domain-prefixes", '{"safety": "Safer?"}')
    assert overridden.domain_prefixes == {"safety": "Safer?"}
    for bad in ("{not json", '["safety"]', '{"safety": 1}'):
        with pytest.raises(SystemExit):
            parse("--domain-prefixes", bad)
        assert "--domain-prefixes" in capsys.readouterr().err


def test_training_encodes_each_domain_with_its_prefix_and_saves_the_mapping(tiny_bert, pairs_file, tmp_path):
    config = TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(tmp_path / "out"), max_length=96,
                         domain_prefixes={"reasoning": CORRECT}, max_steps=1, batch_size=4, micro_batch_size=4,
                         save_steps=0, precision="fp32")
    train(config)  # one real step, so the saved tinyrm.json is the trainer's own
    assert RewardModel.from_pretrained(str(tmp_path / "out")).config.domain_prefixes == {"reasoning": CORRECT}
    pairs = load_pairs([str(pairs_file)]).pairs
    assert {p.domain for p in pairs} >= {"reasoning", "chat"}
    enc = build_model(config).encoder
    dataset = ClozeDataset(pairs, enc, "both", 0, domain_prefixes=config.domain_prefixes)
    correct = encoder(enc.tokenizer, CORRECT)
    for pair, (example, _) in zip(pairs, map(dataset.example, range(0, len(dataset), 2))):
        reference = correct if pair.domain == "reasoning" else enc
        assert example == reference.encode(pair.prompt, pair.chosen, pair.rejected)
    assert build_model(TrainConfig(model=tiny_bert)).config.domain_prefixes is None


@pytest.fixture
def saved(spread_bert, tmp_path):
    # Wide-initialised: a prefix moves P by 2e-3 / 2e-2 (on tiny_bert by 1e-8 / 3e-7, below the tolerances below).
    rm = RewardModel.from_pretrained(spread_bert, device="cpu")
    rm.config.domain_prefixes = dict(MAPPING)
    rm.save_pretrained(tmp_path / "saved")
    return str(tmp_path / "saved")


def fp32(rm):
    rm.engine.config.precision = "fp32"  # exact comparisons between models
    return rm


def test_tinyrm_json_round_trips_the_mapping_and_old_files_load(saved, tmp_path):
    assert json.loads((tmp_path / "saved" / "tinyrm.json").read_text())["domain_prefixes"] == MAPPING
    assert RewardModel.from_pretrained(saved, device="cpu").config.domain_prefixes == MAPPING
    old = json.loads((tmp_path / "saved" / "tinyrm.json").read_text())
    del old["domain_prefixes"]
    (tmp_path / "saved" / "tinyrm.json").write_text(json.dumps(old))
    config = RewardConfig.load(saved)
    assert config.domain_prefixes is None and config.prefix_for("safety") == config.prefix


def test_compare_batch_uses_each_rows_domain_prefix(saved):
    rm = fp32(RewardModel.from_pretrained(saved, device="cpu"))
    as_safety = fp32(RewardModel.from_pretrained(saved, device="cpu", prefix=SAFER))
    as_reasoning = fp32(RewardModel.from_pretrained(saved, device="cpu", prefix=CORRECT))
    items = [("Is it safe?", "Be careful.", "Sure."), ("2 + 2?", "4", "5"), ("Hi", "Hello!", "No."),
             ("Joke?", "A joke.", "No.")]
    domains = ["safety", "reasoning", None, "chat"]  # chat is not in the mapping: default prefix
    # One pair per call: the same input ids in the same batch, so the probabilities are identical.
    single = [rm.compare(*item, domain=domain) for item, domain in zip(items, domains)]
    references = [as_safety, as_reasoning, rm, rm]
    assert single == [ref.compare(*item) for ref, item in zip(references, items)]
    plain = [rm.compare(*item) for item in items[:2]]
    assert min(abs(single[i] - plain[i]) for i in (0, 1)) > 100 * 1e-6  # the prefix mattered, beyond the tolerance
    # Mixed domains in one batch: the same scores, up to padding.
    got = rm.compare_batch(items, domains=domains)
    assert got == pytest.approx(single, abs=1e-6)
    assert rm.encode(*items[0], domain="safety") == as_safety.encode(*items[0])
    assert rm.encode(*items[0], domain="safety").input_ids != rm.encode(*items[0]).input_ids
    assert rm.encode(*items[0], domain="chat") == rm.encode(*items[0])
    with pytest.raises(ValueError, match="2 domains for 4 pairs"):
        rm.compare_batch(items, domains=domains[:2])
    # The overlapped, chunked path slices the prefixes with the items.
    rm.engine.config.overlap, rm.engine.config.chunk_pairs = "on", 3
    assert rm.compare_batch(items, domains=domains) == pytest.approx(got, abs=1e-6)


def test_caching_encoder_prefetches_each_rows_prefix(tokenizer):
    cached = encoder(tokenizer, cls=CachingClozeEncoder)
    plain = encoder(tokenizer)
    items = [("q1", "a", "b"), ("q2", "c", "d")]
    prefixes = [SAFER, None]
    cached.prefetch(items, prefixes)
    misses = cached.misses
    for item, prefix in zip(items, prefixes):
        assert cached.encode(*item, prefix=prefix) == plain.encode(*item, prefix=prefix)
    assert cached.misses == misses  # the row's own instruction was tokenised up front


def test_evaluate_passes_each_pairs_domain(saved):
    rm = fp32(RewardModel.from_pretrained(saved, device="cpu"))
    pairs = [PreferencePair("Is it safe?", "Be careful.", "Sure.", domain="safety"),
             PreferencePair("Hi", "Hello!", "No.")]
    calls = []
    original = rm.compare_batch

    def spy(items, domains=None, **kwargs):
        calls.append(domains)
        return original(items, domains=domains, **kwargs)

    rm.compare_batch = spy
    results = evaluate_pairs(rm, pairs)
    assert calls == [["safety", None]] and results["n"] == 2

    class NoDomains:  # scorers without the keyword (baselines, routed bundles) still evaluate
        name = "plain"

        def compare_batch(self, items, batch_size=32, both_orders=None):
            return [0.9 for _ in items]

    class Recording(NoDomains):
        def compare_batch(self, items, batch_size=32, both_orders=None, domains=None):
            self.domains = domains
            return super().compare_batch(items)

    assert evaluate_pairs(NoDomains(), pairs)["accuracy"] == 1.0
    recording = Recording()
    evaluate_pairs(recording, pairs)
    assert recording.domains == ["safety", None]
