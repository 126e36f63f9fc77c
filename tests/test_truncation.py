"""Difference-aware truncation (tinyrm.truncation): the differing span of two long responses survives."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tinyrm.backbone import default_model_path
from tinyrm.config import CONFIG_FILE, RewardConfig
from tinyrm.prompt import ClozeEncoder, get_template, keep_end, keep_ends
from tinyrm.truncation import (
    DEFAULT_TRUNCATION,
    TRUNCATION_MODES,
    diff_survival,
    fit_context,
    focus,
    focused_views,
    plan_responses,
    shared_affixes,
    span_kept,
)

FILLER = " ".join(["one two three four five six seven eight nine ten"] * 30)  # 300 tokens, no "." (the marker)
CHOSEN = f"{FILLER} apple {FILLER}"
REJECTED = f"{FILLER} banana {FILLER}"
APPLE, BANANA = 6207, 15212  # single WordPiece tokens of the embedded tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def make(tokenizer, truncation, max_length=128, **kw) -> ClozeEncoder:
    return ClozeEncoder(tokenizer, get_template("flan"), max_length=max_length, truncation=truncation, **kw)


def check_shape(enc, tokenizer, max_length):
    assert len(enc.input_ids) <= max_length
    assert enc.input_ids.count(tokenizer.mask_token_id) == 1
    assert enc.input_ids[enc.mask_position] == tokenizer.mask_token_id


# ----------------------------------------------------------------------------- id-level rules
def test_shared_affixes_do_not_overlap():
    assert shared_affixes([1, 2, 3, 4], [1, 2, 9, 4]) == (2, 1)
    assert shared_affixes([1, 1], [1, 1, 1]) == (2, 0)  # b's extra token is its differing span
    assert shared_affixes([5, 6], [7, 8]) == (0, 0)
    assert shared_affixes([], [1]) == (0, 0)


def test_focused_views_keep_context_and_mark_what_was_dropped():
    a, b = [1, 2, 3, 4, 50, 6, 7, 8], [1, 2, 3, 4, 60, 61, 6, 7, 8]
    marker = [0]
    assert focused_views(a, b, 1, marker) == ([0, 4, 50, 6, 0], [0, 4, 60, 61, 6, 0])
    assert focused_views(a, b, 3, marker) == ([0, 2, 3, 4, 50, 6, 7, 8], [0, 2, 3, 4, 60, 61, 6, 7, 8])
    assert focused_views(a, b, 4, marker) == (a, b)  # nothing dropped, no marker
    view, start, stop = focus(b, 4, 3, 1, marker)
    assert view[start:stop] == [60, 61]


def brute_context(p, s, da, db, m, room):
    def size(c):
        return da + db + 2 * (min(c, p) + (m if p > c else 0)) + 2 * (min(c, s) + (m if s > c else 0))
    fits = [c for c in range(max(p, s) + 1) if size(c) <= room]
    return max(fits) if fits else None


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 20), st.integers(0, 20), st.integers(0, 4),
       st.integers(-5, 200))
def test_fit_context_is_the_largest_width_that_fits(p, s, da, db, m, room):
    assert fit_context(p, s, da, db, m, room) == brute_context(p, s, da, db, m, room)


@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60), st.integers(0, 4))
def test_span_kept_agrees_with_keep_ends(length, a, b, m):
    start, stop = min(a, b) % (length + 1), max(a, b) % (length + 1)
    start, stop = min(start, stop), max(start, stop)
    for budget in range(length + 2):
        out = keep_ends(list(range(length)), budget, [-1] * m)
        assert span_kept(length, start, stop, budget, m) == all(i in out for i in range(start, stop))


ids = st.lists(st.integers(1, 6), max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 6), max_size=60), ids, ids, ids, ids, ids, st.integers(0, 120),
       st.sampled_from(TRUNCATION_MODES), st.integers(0, 8), st.integers(0, 3))
def test_plan_fits_and_keeps_the_differing_span_whenever_it_fits(prompt, head, mid_a, mid_b, tail, extra, avail,
                                                                  mode, context, m):
    a, b = head + mid_a + tail, head + mid_b + tail + extra
    marker = [-1] * m  # ids the responses never use
    plan = plan_responses(a, b, len(prompt), avail, marker, mode, context)
    out_a, out_b = keep_ends(plan.a, plan.budgets[1], marker), keep_ends(plan.b, plan.budgets[2], marker)
    assert plan.truncated == (len(prompt) + len(a) + len(b) > avail)
    if not plan.truncated:
        assert (out_a, out_b, plan.diff_kept) == (a, b, True)
        return
    assert len(keep_end(prompt, plan.budgets[0], marker)) + len(out_a) + len(out_b) <= avail
    p, s = shared_affixes(a, b)
    span_a, span_b = a[p : len(a) - s], b[p : len(b) - s]

    def contains(seq, part):
        return not part or any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))

    if plan.diff_kept:
        assert contains(out_a, span_a) and contains(out_b, span_b)
    if mode == "diff" and (p or s):
        room = avail - min(len(prompt), avail // 4)
        if brute_context(p, s, len(span_a), len(span_b), m, room) is not None:
            assert plan.diff_kept and (out_a, out_b) == (plan.a, plan.b)  # spans whole, views uncut
    else:  # ends, or diff on a pair that shares nothing: today's rule on the whole responses
        assert (plan.a, plan.b) == (a, b)


# ----------------------------------------------------------------------------- the encoder
def test_a_one_token_difference_deep_inside_survives_with_diff_only(tokenizer):
    ends, diff = make(tokenizer, "ends"), make(tokenizer, "diff")
    for a, b in ((CHOSEN, REJECTED), (REJECTED, CHOSEN)):
        cut, kept = ends.encode("Which fruit?", a, b), diff.encode("Which fruit?", a, b)
        for enc in (cut, kept):
            check_shape(enc, tokenizer, 128)
            assert enc.truncated
        assert APPLE not in cut.input_ids and BANANA not in cut.input_ids and not cut.diff_kept
        assert kept.input_ids.count(APPLE) == kept.input_ids.count(BANANA) == 1 and kept.diff_kept
        first = APPLE if a == CHOSEN else BANANA
        assert kept.input_ids.index(first) < kept.input_ids.index(APPLE + BANANA - first) < kept.mask_position
        text = tokenizer.decode(kept.input_ids)
        assert text.count("...") == 4  # both sides of both responses were elided
        assert "which fruit?" in text  # the prompt kept whole: only the responses gave way


def test_diff_equals_ends_when_the_pair_fits_or_shares_nothing(tokenizer):
    ends, diff = make(tokenizer, "ends"), make(tokenizer, "diff")
    short = ("What is 2 + 2?", "It is 4.", "It is 5.")
    assert ends.encode(*short) == diff.encode(*short) and not diff.encode(*short).truncated
    apart = ("Pick one.", "alpha " * 200, "omega " * 200)  # nothing shared: both keep heads and tails
    assert ends.encode(*apart) == diff.encode(*apart) and diff.encode(*apart).truncated
    long_prompt = ("why " * 400, "It is 4.", "It is 5.")  # only the prompt is cut
    assert ends.encode(*long_prompt) == diff.encode(*long_prompt) and diff.encode(*long_prompt).diff_kept


def test_diff_falls_back_to_head_and_tail_when_the_differing_spans_are_too_long(tokenizer):
    diff = make(tokenizer, "diff", max_length=96)
    enc = diff.encode("Q", FILLER + " alpha" * 100 + " end", FILLER + " omega" * 100 + " end")
    check_shape(enc, tokenizer, 96)
    assert enc.truncated and not enc.diff_kept


def test_mode_is_checked(tokenizer):
    with pytest.raises(ValueError, match="truncation must be one of"):
        make(tokenizer, "middle")
    with pytest.raises(ValueError, match="diff_context"):
        make(tokenizer, "diff", diff_context=-1)


_words = st.lists(st.sampled_from(["cat", "dog", "the", "[MASK]", "x", "1", "run"]), max_size=80).map(" ".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_words, _words, _words, _words, _words, st.sampled_from([40, 64, 96]))
def test_encoded_pairs_always_fit_with_one_mask(tokenizer, prompt, head, mid_a, mid_b, tail, max_length):
    for mode in TRUNCATION_MODES:
        enc = make(tokenizer, mode, max_length=max_length, diff_context=4).encode(
            prompt, f"{head} {mid_a} {tail}", f"{head} {mid_b} {tail}")
        check_shape(enc, tokenizer, max_length)


def test_diff_survival_counts(tokenizer):
    pairs = [("Which fruit?", CHOSEN, REJECTED), ("Q", "yes", "no")]
    assert diff_survival(make(tokenizer, "ends"), pairs) == {
        "pairs": 2, "truncated": 1, "diff_kept": 1, "truncated_share": 0.5, "diff_kept_share": 0.5,
        "diff_kept_when_truncated": 0.0}
    assert diff_survival(make(tokenizer, "diff"), pairs)["diff_kept_share"] == 1.0


# ----------------------------------------------------------------------------- config, training, scoring
def test_reward_config_round_trip_and_old_files_load_as_ends(tmp_path):
    RewardConfig(truncation="diff", diff_context=8).save(tmp_path)
    loaded = RewardConfig.load(tmp_path)
    assert (loaded.truncation, loaded.diff_context) == ("diff", 8)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    del data["truncation"], data["diff_context"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    assert RewardConfig.load(tmp_path).truncation == "ends" and RewardConfig.load(tmp_path).diff_context == 32
    assert RewardConfig().truncation == DEFAULT_TRUNCATION == "diff"  # new models; old files: "ends"


def test_cli_flags():
    from tinyrm.cli import build_parser
    from tinyrm.cli.core import train_config_from_args

    def parse(*argv):
        return train_config_from_args(build_parser().parse_args(["train", "--data", "x", "--output", "o", *argv]))

    assert (parse().truncation, parse().diff_context) == ("diff", 32)  # the default
    assert parse("--truncation", "ends").truncation == "ends"
    config = parse("--truncation", "diff", "--diff-context", "8")
    assert (config.truncation, config.diff_context) == ("diff", 8)
    with pytest.raises(SystemExit):
        parse("--truncation", "middle")


def long_pairs_file(tmp_path):
    from tinyrm.data import PreferencePair
    from tinyrm.tools.synthetic import write_jsonl

    pairs = [PreferencePair("Which fruit?", CHOSEN, REJECTED), PreferencePair("Which fruit?", REJECTED, CHOSEN)]
    return write_jsonl(pairs, tmp_path / "long.jsonl")


def test_training_rows_hold_the_difference_and_the_saved_config_the_rule(tiny_bert, tmp_path):
    from tinyrm.arrow import load_pair_table
    from tinyrm.pairwise.data import ClozeDataset
    from tinyrm.pairwise.train import build_model
    from tinyrm.train import TrainConfig, train

    path = long_pairs_file(tmp_path)
    table = load_pair_table([str(path)], cache_dir=tmp_path)
    rows = {}
    for mode in TRUNCATION_MODES:  # one cache folder: the mode must be part of the cache key
        config = TrainConfig(model=tiny_bert, data=[str(path)], max_length=128, truncation=mode, diff_context=16)
        rm = build_model(config)
        assert (rm.encoder.truncation, rm.config.truncation) == (mode, mode)
        rows[mode] = ClozeDataset(table, rm.encoder, "both", 0)
    for i in range(len(rows["diff"])):
        (ends, _), (diff, _) = rows["ends"].example(i), rows["diff"].example(i)
        assert APPLE not in ends.input_ids and not ends.diff_kept
        assert APPLE in diff.input_ids and BANANA in diff.input_ids and diff.diff_kept
        assert len(diff.input_ids) <= 128 and diff.input_ids.count(rm.tokenizer.mask_token_id) == 1
    assert (rows["ends"].diff_kept, rows["diff"].diff_kept) == (0, 4)

    out = tmp_path / "model"
    train(TrainConfig(model=tiny_bert, data=[str(path)], output=str(out), batch_size=2, micro_batch_size=2,
                      max_steps=1, max_length=128, save_steps=0, truncation="diff", diff_context=16,
                      length_balance=False))
    saved = RewardConfig.load(out)
    assert (saved.truncation, saved.diff_context) == ("diff", 16)


def test_scoring_feeds_the_model_the_same_cut(tiny_bert, tmp_path):
    from tinyrm import RewardModel

    fed = {}
    for mode in TRUNCATION_MODES:
        folder = tmp_path / mode
        rm = RewardModel.from_pretrained(tiny_bert, max_length=128, truncation=mode)  # saved with the rule
        rm.save_pretrained(folder)
        rm = RewardModel.from_pretrained(str(folder))
        assert rm.encoder.truncation == mode
        seen = []
        run_units = rm.engine.run_units

        def record(encodings, *args, _seen=seen, _run=run_units, **kwargs):
            _seen.extend(encodings)
            return _run(encodings, *args, **kwargs)

        rm.engine.run_units = record
        (p,) = rm.compare_batch([("Which fruit?", CHOSEN, REJECTED)])
        assert 0.0 <= p <= 1.0 and len(seen) >= 2  # both orders went to the model
        fed[mode] = seen
        for enc in seen:
            assert len(enc.input_ids) <= 128 and enc.input_ids.count(rm.tokenizer.mask_token_id) == 1
    assert all(APPLE in e.input_ids and BANANA in e.input_ids and e.diff_kept for e in fed["diff"])
    assert all(APPLE not in e.input_ids and not e.diff_kept for e in fed["ends"])
