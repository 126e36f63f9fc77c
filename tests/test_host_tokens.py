"""The scoring host's batched tokenisation (``inference.tokens``): the direct Rust route gives exactly the ids
of transformers' call, falls back to it whenever the two could differ, and prefetched encodings are exactly
what ``encode`` returns one pair at a time, on either route."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinyrm.backbone import default_model_path
from tinyrm.inference import tokens
from tinyrm.inference.tokens import CachingClozeEncoder, batch_ids, rust_tokenizer
from tinyrm.prompt import ClozeEncoder, get_template

TEXTS = ["Which response is better?", "  spaced   out ", "", "naïve café — 東京 ✓", "yes [MASK] <mask> no",
         "many words here " * 20, "a\nb\tc", "It is 4."]


def _bpe():
    """A byte-level BPE with a left-stripping mask (ModernBERT's and RoBERTa's layout)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "</s>", "<pad>", "<mask>", "<unk>"]
    tok.train_from_iterator([" ".join(TEXTS)] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token=AddedToken("<mask>", lstrip=True))


def _tokenizer(kind: str):
    if kind == "bpe":
        return _bpe()
    tok = AutoTokenizer.from_pretrained(default_model_path())
    tok.split_special_tokens = kind.endswith("split-specials")  # "[MASK]" in text is then plain text
    return tok


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "wordpiece-split-specials"])
def tokenizer(request):
    return _tokenizer(request.param)


def test_rust_route_gives_transformers_ids(tokenizer) -> None:
    tokenizer("settle", "state")  # what the engine does before its workers start
    assert rust_tokenizer(tokenizer) is not None
    pairs = [(a, b) for a in TEXTS for b in TEXTS[::3]]
    types = "token_type_ids" in tokenizer.model_input_names
    for inputs, special in ((TEXTS, False), (pairs, True)):
        ids, type_ids = batch_ids(tokenizer, inputs, special, types)
        first = [x[0] for x in inputs] if special else inputs
        expected = tokenizer(first, [x[1] for x in inputs] if special else None, add_special_tokens=special)
        assert ids == expected["input_ids"]
        assert type_ids == (expected["token_type_ids"] if types else None)


def test_a_backend_left_truncating_is_not_called_directly(tokenizer) -> None:
    cut = tokenizer(TEXTS[5], truncation=True, max_length=8)["input_ids"]  # leaves truncation set on the backend
    assert len(cut) == 8 and rust_tokenizer(tokenizer) is None
    ids, _ = batch_ids(tokenizer, [TEXTS[5]], True, False)
    assert len(ids[0]) > 8  # the transformers route, untruncated (and it resets the backend)
    assert rust_tokenizer(tokenizer) is not None


@pytest.mark.parametrize("route", ["rust", "transformers"])
def test_a_lone_surrogate_is_named_on_either_route(tokenizer, route, monkeypatch) -> None:
    if route == "transformers":
        monkeypatch.setattr(tokens, "rust_tokenizer", lambda _: None)
    with pytest.raises(ValueError, match=r"lone surrogate \('\\ud800' at character 3 of 'bad\\ud800'\)"):
        batch_ids(tokenizer, [("fine", "ok"), ("bad\ud800", "ok")], True, False)


def _items() -> list[tuple[str, str, str]]:
    out = [(p, a, b) for p in TEXTS[:4] for a, b in zip(TEXTS[1:], TEXTS[2:])]
    return out + [("long " * 80, "answer " * 60, "other " * 50), ("a [MASK] prompt", "yes <mask>", "no")]


class _Spy:
    """The Rust tokenizer, counting the batched calls made on it."""

    def __init__(self, backend) -> None:
        self.backend, self.calls = backend, 0

    def encode_batch_fast(self, *args, **kwargs):
        self.calls += 1
        return self.backend.encode_batch_fast(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])  # an encoder needs its mask token whole
@pytest.mark.parametrize("route", ["rust", "transformers"])
def test_prefetched_encodings_are_encode_one_at_a_time(kind, route, monkeypatch) -> None:
    tokenizer = _tokenizer(kind)
    template = get_template("flan")
    cached = CachingClozeEncoder(tokenizer, template, max_length=96)
    plain = ClozeEncoder(tokenizer, template, max_length=96)
    items = _items()
    expected = [plain.encode(p, x, y) for p, a, b in items for x, y in ((a, b), (b, a))]
    whole = sum(not e.truncated for e in expected)
    assert whole and whole < len(expected)
    spy = _Spy(rust_tokenizer(tokenizer))
    monkeypatch.setattr(tokens, "rust_tokenizer", lambda tok: spy if route == "rust" else None)
    cached.prefetch(items, both=True)
    assert spy.calls == (2 if route == "rust" else 0)  # the texts, then the whole pairs that fit
    built = len(cached._ready)
    ahead = [cached.encode(p, x, y) for p, a, b in items for x, y in ((a, b), (b, a))]
    assert [astuple(e) for e in ahead] == [astuple(e) for e in expected]
    assert built == whole and not cached._ready  # every whole pair built ahead, each taken once
