"""Shared fixtures: tiny random ModernBERT / BERT checkpoints saved to disk (seconds to build)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config) -> None:
    """Tokenised training data goes to a folder of this session, never the user's ~/.cache. Set here,
    before the test modules are imported (some copy os.environ for their subprocesses at import)."""
    config.tinyrm_datasets_cache = tempfile.mkdtemp(prefix="tinyrm-test-datasets-")
    os.environ["TINYRM_DATASETS_CACHE"] = config.tinyrm_datasets_cache


def pytest_unconfigure(config) -> None:
    shutil.rmtree(getattr(config, "tinyrm_datasets_cache", ""), ignore_errors=True)


def _save_tiny(kind: str, directory: Path, seed: int = 0, **extra) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from tinyrm.backbone import default_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, pad_token_id=tokenizer.pad_token_id, **extra)
    if kind == "modernbert":
        config = ModernBertConfig(**common, max_position_embeddings=1024, global_attn_every_n_layers=1,
                                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                  cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
        model = ModernBertForMaskedLM(config)
    else:
        model = BertForMaskedLM(BertConfig(**common, max_position_embeddings=1024))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory) -> str:
    """Path of a 2-layer random ModernBERT masked LM (with the MiniLM WordPiece tokenizer)."""
    return _save_tiny("modernbert", tmp_path_factory.mktemp("tiny-modernbert"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """Path of a 2-layer random BERT masked LM."""
    return _save_tiny("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def spread_bert(tmp_path_factory) -> str:
    """tiny_bert initialised 10x wider (initializer_range 0.2): its P spread away from 0.5 (at 0.02 they stay
    within 4e-5 of it), so two forwards agreeing to 1e-4 says something (tests/test_packed.py)."""
    return _save_tiny("bert", tmp_path_factory.mktemp("spread-bert"), seed=2, initializer_range=0.2)


@pytest.fixture(params=["modernbert", "bert"])
def tiny_model(request, tiny_modernbert, tiny_bert) -> str:
    return tiny_modernbert if request.param == "modernbert" else tiny_bert


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    """A small JSONL preference file in the shared-data schema."""
    from tinyrm.tools.synthetic import generate, write_jsonl

    return write_jsonl(generate(24, seed=1), tmp_path / "pairs.jsonl")


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def grad_mode_is_left_as_found():
    """A test that leaves autograd off (``torch.set_grad_enabled(False)`` in code it calls in-process) would break
    every training test after it, far from the cause: fail the culprit instead, and restore the mode."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left autograd disabled (torch.set_grad_enabled(False) without restoring it)")


# ------------------------------------------------------------------ calibration (test_calibration*.py)
@pytest.fixture(scope="module")
def calibration_data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic held-out pairs: ``dev`` (to fit a temperature) and ``test``."""
    from tinyrm.tools.synthetic import generate, write_jsonl

    folder = tmp_path_factory.mktemp("calibration-data")
    return {"dev": write_jsonl(generate(24, seed=1), folder / "dev.jsonl"),
            "test": write_jsonl(generate(24, seed=2), folder / "test.jsonl")}


@pytest.fixture(scope="module")
def cloze_dir(tiny_bert, tmp_path_factory) -> Path:
    """A saved cloze folder without a temperature."""
    from tinyrm import RewardModel

    out = tmp_path_factory.mktemp("cloze") / "rm"
    RewardModel.from_pretrained(tiny_bert, device="cpu").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cal_dir(cloze_dir, tmp_path_factory) -> Path:
    """``cloze_dir`` with a small temperature saved (``calibration_helpers.SMALL_T``)."""
    from .calibration_helpers import SMALL_T, with_temperature

    return with_temperature(cloze_dir, tmp_path_factory.mktemp("cal") / "rm", SMALL_T)
