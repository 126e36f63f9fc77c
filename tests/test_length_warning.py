"""tinyrm truncates over-long pairs itself, so transformers' "Token indices sequence length is longer than
the specified maximum sequence length" warning must not appear on its paths (a user reads it as a bug),
and still appears for anyone calling the tokenizer directly."""

import logging

import pytest

WARNING = "Token indices sequence length is longer"


@pytest.fixture
def transformers_log():
    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = hf_logging.get_logger("transformers")
    handler = Keep()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def long_text(words: int) -> str:
    return " ".join(f"word{i % 97}" for i in range(words))


def fresh_tokenizer():
    from transformers import AutoTokenizer

    from tinyrm.backbone import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())  # the warning fires once per tokenizer


def test_cloze_baseline_and_process_encoders_stay_quiet(transformers_log):
    from tinyrm.pairwise.baselines.encoding import ResponseEncoder
    from tinyrm.process.prompt import PREFIXES, STEP_TEMPLATES, StepEncoder
    from tinyrm.prompt import ClozeEncoder, get_template

    cloze = ClozeEncoder(fresh_tokenizer(), get_template("flan"), max_length=128)
    assert len(cloze.encode(long_text(900), long_text(1500), long_text(1400)).input_ids) <= 128
    assert len(ResponseEncoder(fresh_tokenizer(), 128).encode(long_text(900), long_text(1500)).input_ids) <= 128
    encoder = StepEncoder(fresh_tokenizer(), next(iter(STEP_TEMPLATES.values())), PREFIXES["process"], 128)
    encoder.tokenize(long_text(900), [long_text(800), long_text(10)])
    assert not [m for m in transformers_log if WARNING in m]


def test_scoring_stays_quiet_and_direct_tokenizer_use_still_warns(transformers_log, tiny_bert):
    from tinyrm import RewardModel

    rm = RewardModel.from_pretrained(tiny_bert, max_length=128)
    rm.compare_batch([(long_text(900), long_text(1500), long_text(1400))])
    assert not [m for m in transformers_log if WARNING in m]
    fresh_tokenizer()(long_text(900))
    assert [m for m in transformers_log if WARNING in m]  # the warning itself still works elsewhere
