"""Training defaults chosen for the backbone (MLM head or not) and the device."""

from __future__ import annotations

import pytest

from tinyrm.defaults import DEVICE_DEFAULTS, HEADLESS, WITH_HEAD, checkpoint_has_mlm_head, resolve_defaults
from tinyrm.train import TrainConfig


@pytest.fixture(scope="module")
def headless_bert(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT saved as a plain encoder (BertModel): a checkpoint without MLM-head weights."""
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("headless")
    BertModel.from_pretrained(tiny_bert).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return str(folder)


def test_head_detection(tiny_bert, tiny_modernbert, headless_bert):
    assert checkpoint_has_mlm_head(tiny_bert) and checkpoint_has_mlm_head(tiny_modernbert)
    assert not checkpoint_has_mlm_head(headless_bert)
    assert not checkpoint_has_mlm_head("default")  # the embedded sentence-embedding MiniLM
    assert checkpoint_has_mlm_head("org/some-hub-model")  # not local: assumed to be a real masked LM


def test_auto_fields_follow_the_backbone_and_the_device(tiny_bert, headless_bert, capsys):
    with_head = resolve_defaults(TrainConfig(model=tiny_bert))
    assert (with_head.objective, with_head.read) == (WITH_HEAD["objective"], WITH_HEAD["read"])
    device = "cpu"  # the test machine has no GPU; on one, DEVICE_DEFAULTS["cuda"] applies
    for name, value in DEVICE_DEFAULTS[device].items():
        assert getattr(with_head, name) == value
    assert "defaults for" in capsys.readouterr().out  # printed at start
    headless = resolve_defaults(TrainConfig(model=headless_bert))
    assert (headless.objective, headless.read) == (HEADLESS["objective"], HEADLESS["read"])


def test_explicit_values_win(headless_bert):
    config = resolve_defaults(TrainConfig(model=headless_bert, objective="cloze", read="mask", lr=3e-5,
                                          batch_size=8, micro_batch_size=4, max_length=64, pooling="cls"))
    assert (config.objective, config.read, config.lr, config.batch_size, config.micro_batch_size,
            config.max_length, config.pooling) == ("cloze", "mask", 3e-5, 8, 4, 64, "cls")
    assert resolve_defaults(config) is config  # nothing left to fill: the same object


def test_a_batch_below_the_default_micro_batch_is_one_micro_batch_of_that_size(headless_bert, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    micro = DEVICE_DEFAULTS["cpu"]["micro_batch_size"]
    config = resolve_defaults(TrainConfig(model=headless_bert, batch_size=4), announce=False)
    assert (config.batch_size, config.micro_batch_size) == (4, 4)  # not a step of `micro` sequences
    assert resolve_defaults(TrainConfig(model=headless_bert, batch_size=4 * micro),
                            announce=False).micro_batch_size == micro  # larger batches accumulate
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_defaults(TrainConfig(model=headless_bert, batch_size=4), announce=False).micro_batch_size == 2
