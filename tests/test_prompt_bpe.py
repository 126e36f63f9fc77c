"""The piecewise encoder must reproduce joint tokenization for byte-level BPE (ModernBERT-style)."""

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tinyrm.prompt import DEFAULT_PREFIX, ClozeEncoder, get_template, resolve_answer_ids

CORPUS = [
    "Which response is the most helpful, relevant, and correct? Choice 0: Choice 1: The better option is choice",
    "Question: What is 2 + 2? Answer: It is 4. It is 5. Hello there, how are you doing today?",
    "def add(a, b): return a + b. The quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
] * 50


@pytest.fixture(scope="module")
def bpe_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = None
    specials = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    # as in ModernBERT's tokenizer, the mask absorbs the space before it
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token=AddedToken("[MASK]", lstrip=True))
    return fast


@pytest.mark.parametrize("prompt, a, b", [
    ("What is 2 + 2?", "It is 4.", "It is 5."),
    ("  spaced   prompt ", " leading space", "trailing space "),
    ("", "x", ""),
])
def test_bpe_pieces_match_joint_tokenization(bpe_tokenizer, prompt, a, b):
    tok = bpe_tokenizer
    encoder = ClozeEncoder(tok, get_template("flan"), prefix=DEFAULT_PREFIX, max_length=512)
    encoder._encode_joint = lambda values: None  # the pieces' ids, never the whole pair's tokenization
    enc = encoder.encode(prompt, a, b)
    first = f"{DEFAULT_PREFIX} {prompt} Choice 0: {a}"
    second = f"Choice 1: {b} The better option is choice {tok.mask_token}"
    joint = tok(first, second)["input_ids"]
    # Every id, whitespace runs and empty slots included (``_pieces`` moves whitespace onto the next piece, so
    # byte-level BPE sees ' word' as in the joined string), not just the answer slot at the end.
    assert enc.input_ids == joint
    assert enc.input_ids.count(tok.mask_token_id) == 1
    assert len(resolve_answer_ids(tok, ["0", "1"])) == 2
