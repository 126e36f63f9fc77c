"""tinyrm.piecewise: where it says a pair's pieces give the whole pair's ids, they do, for any text.

Hypothesis draws texts from pieces that stress the junctions (runs of spaces, tabs and newlines, punctuation,
contractions, digits, accents and combining marks, CJK, emoji, the mask and separator tokens spelled out,
the template's own words) and compares ``encode`` through the pieces with ``encode`` through the whole pair
(the rule switched off), and the prefetched rows with both; on BERT's WordPiece (the embedded model's
tokenizer) and a ModernBERT-style byte-level BPE whose mask strips the space before it. Where the proof does
not hold (a glued template, a mask keeping that space, a prefix space, SentencePiece), there is no rule.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinyrm.backbone import default_model_path
from tinyrm.inference.tokens import CachingClozeEncoder
from tinyrm.piecewise import piecewise_rule
from tinyrm.prompt import ClozeEncoder, PromptTemplate, get_template

CORPUS = ["Which response is the most helpful, relevant, and correct? Choice 0: Choice 1: The better option is "
          "choice. Question: What's 2 + 2? Answer: it's 4, isn't it?\n\n  Déjà vu 中文 😀 tabs\tand\nlines"] * 40
CHUNKS = ["abc", "Word", "choice", "Answer:", "Choice 1:", " ", "  ", "\n", "\n\n", "\t", " \n ", "'s", "'t", "n't",
          "42", "3.14", ".", ",", "!?", "...", "-", "(", ")", "é", "e\u0301", "\u0301", "Déjà", "中文", "😀", "[MASK]",
          "[SEP]", "[CLS]", "x"]
TEXT = st.lists(st.sampled_from(CHUNKS), max_size=12).map("".join)


def _bpe(lstrip: bool = True, prefix_space: bool = False, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    specials = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=lstrip, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token=AddedToken("[MASK]", lstrip=lstrip))


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {"wordpiece": AutoTokenizer.from_pretrained(default_model_path()), "byte-level": _bpe()}


def _encoders(tokenizer, max_length: int) -> tuple[ClozeEncoder, ClozeEncoder]:
    """(through the pieces, through the whole pair)."""
    pieces = ClozeEncoder(tokenizer, get_template("flan"), max_length=max_length)
    whole = copy.copy(pieces)
    whole._piecewise = None
    return pieces, whole


def test_rules(tokenizers) -> None:
    flan, tinyrm = get_template("flan"), get_template("tinyrm")
    wordpiece, byte_level = tokenizers["wordpiece"], tokenizers["byte-level"]
    assert piecewise_rule(wordpiece, flan.first, flan.second).end_slots == ()  # whitespace is dropped there
    assert piecewise_rule(byte_level, flan.first, flan.second).end_slots == ("a",)  # a's trailing space is tokens
    assert piecewise_rule(wordpiece, tinyrm.first, tinyrm.second) is None  # "{instruction}" + "Question: "
    assert piecewise_rule(_bpe(lstrip=False), flan.first, flan.second) is None  # "choice " + [MASK]
    assert piecewise_rule(_bpe(prefix_space=True), flan.first, flan.second) is None
    glued_mask = PromptTemplate("glued", ("{prompt}", " Choice 0: ", "{a}"),
                                ("Choice 1: ", "{b}", " choice:", "{mask}"))
    assert piecewise_rule(_bpe(lstrip=False), glued_mask.first, glued_mask.second) is not None
    metaspace = _bpe()
    metaspace.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    assert piecewise_rule(metaspace, flan.first, flan.second) is None
    nfc = AutoTokenizer.from_pretrained(default_model_path())
    nfc.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Strip()])
    assert piecewise_rule(nfc, flan.first, flan.second) is None  # Strip is not per character
    spaced = AutoTokenizer.from_pretrained(default_model_path())
    spaced.add_tokens(["new york"])  # an added token with a space could match across a junction
    assert piecewise_rule(spaced, flan.first, flan.second) is None
    rule = piecewise_rule(byte_level, flan.first, flan.second)
    values = {"instruction": "Pick.", "prompt": "p", "a": "x", "b": "y "}
    assert rule.clean(values) and not rule.clean({**values, "a": "x\n"}) and not rule.clean({**values, "a": ""})
    assert not rule.clean({**values, "prompt": "a [MASK] b"})


def test_a_glued_template_really_differs(tokenizers) -> None:
    """Why tinyrm's template keeps the whole-pair call: "{b}" + "Answer: " is one word in the whole text."""
    from tinyrm.piecewise import PiecewiseRule

    forced = ClozeEncoder(tokenizers["wordpiece"], get_template("tinyrm"), max_length=512)
    whole = copy.copy(forced)
    forced._piecewise = PiecewiseRule("[MASK]", ())
    assert forced.encode("p", "x", "word") != whole.encode("p", "x", "word")


@pytest.mark.parametrize("name", ["wordpiece", "byte-level"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=TEXT, a=TEXT, b=TEXT, instruction=st.sampled_from([None, "", "Rate:", "Which is better?\n"]))
def test_pieces_give_the_whole_pair(tokenizers, name: str, prompt: str, a: str, b: str, instruction) -> None:
    pieces, whole = _encoders(tokenizers[name], max_length=512)
    assert pieces._piecewise is not None
    assert pieces.encode(prompt, a, b, instruction) == whole.encode(prompt, a, b, instruction)


@pytest.mark.parametrize("control", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_separator_controls_are_tokenised_whole(control: str) -> None:
    # Python's rstrip takes U+001C..U+001F as whitespace, the pre-tokenizers glue them to the word before:
    # a vocabulary with such a merge ("!\x1c") shows the difference, so these pairs take the whole-pair route.
    tokenizer = _bpe(corpus=[f"{CORPUS[0]} Done!{control} ok!{control}"] * 40)
    pieces, whole = _encoders(tokenizer, max_length=512)
    assert pieces._piecewise is not None
    assert pieces.encode(f"Done!{control}", "ok", "no") == whole.encode(f"Done!{control}", "ok", "no")


@pytest.mark.parametrize("name", ["wordpiece", "byte-level"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=1, max_size=6), max_length=st.sampled_from([48, 64, 512]))
def test_prefetched_rows_are_encode_rows(tokenizers, name: str, rows, max_length: int) -> None:
    """The rows prefetch lays out from pieces (or tokenises whole) are what encode returns, cut rows included."""
    tokenizer = tokenizers[name]
    template = get_template("flan")
    ahead = CachingClozeEncoder(tokenizer, template, max_length=max_length)
    ahead.prefetch(rows, both=True)
    _, whole = _encoders(tokenizer, max_length)
    for prompt, a, b in rows:
        for x, y in ((a, b), (b, a)):
            assert ahead.encode(prompt, x, y) == whole.encode(prompt, x, y)


@pytest.mark.parametrize("name", ["wordpiece", "byte-level"])
def test_real_pairs_give_the_whole_pair(tokenizers, name: str) -> None:
    """The shared dev pairs (code, markdown, multi-turn transcripts), both orders, as the engine encodes them:
    through the pieces equal to through the whole pair. Skipped without ../shared/data."""
    import json

    from .conftest import require_shared_data

    rows = [json.loads(line) for line in (require_shared_data() / "dev" / "hhh.jsonl").read_text().splitlines()]
    pieces, whole = _encoders(tokenizers[name], max_length=512)
    ahead = CachingClozeEncoder(tokenizers[name], get_template("flan"), max_length=512)
    items = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    ahead.prefetch(items, both=True)
    for prompt, a, b in items:
        for x, y in ((a, b), (b, a)):
            expected = whole.encode(prompt, x, y)
            assert pieces.encode(prompt, x, y) == expected and ahead.encode(prompt, x, y) == expected


def test_trailing_whitespace_is_cut_not_fatal(tokenizers) -> None:
    """A response ending in thousands of spaces (four rows of the shared chat-arena file): on byte level its
    whitespace rides on the template's literal after it, which is never cut; the pair is encoded with that
    whitespace cut (marked truncated) instead of failing, and a pair whose template alone is too long still
    fails."""
    encoder = ClozeEncoder(tokenizers["byte-level"], get_template("flan"), max_length=128)
    padded = encoder.encode("What now?", "Sure, here it is." + " " * 3000, "No.\n\n" + "\n" * 2000)
    plain = encoder.encode("What now?", "Sure, here it is.", "No.")
    assert padded.truncated and not plain.truncated
    assert padded.input_ids == plain.input_ids and len(padded.input_ids) <= 128
    assert padded.input_ids.count(encoder.mask_id) == 1
    with pytest.raises(ValueError, match="max_length=8 is too small"):
        ClozeEncoder(tokenizers["byte-level"], get_template("flan"), max_length=8).encode("p", "a ", "b")
