"""What ``ProcessRewardModel`` does with inputs that are not the plain list of step strings: generators, empty or
blank solutions, a str where a list of candidates belongs, None and other wrong types (review findings 5-7)."""

from __future__ import annotations

import pytest

from tinyrm import ProcessRewardModel
from tinyrm.process.scoring import score_many, solution_scores, steps_and_reward
from tinyrm.process.steps import split

from .process_helpers import BAD, GOOD, PROBLEM


@pytest.fixture(scope="module")
def prm(spread_bert):
    # Zero-shot process prompt on a wide-initialised BERT (its P spread away from 0.5), fp32: scores compared
    # across calls and batches to 1e-5.
    return ProcessRewardModel.from_pretrained(spread_bert, device="cpu", precision="fp32")


def test_steps_given_as_a_generator_are_scored_like_the_list(prm):
    # The type check used to read the generator up, leaving no step: [] and a score of 1.0, ranked first.
    assert prm.score_steps(PROBLEM, (s for s in BAD)) == pytest.approx(prm.score_steps(PROBLEM, BAD), abs=1e-5)
    assert len(prm.score_steps(PROBLEM, iter(BAD))) == len(BAD)
    assert prm.score_solution(PROBLEM, (s for s in BAD)) == pytest.approx(prm.score_solution(PROBLEM, BAD), abs=1e-5)
    with_generator = prm.rerank(PROBLEM, [GOOD, (s for s in BAD)], aggregate="mean")
    with_list = prm.rerank(PROBLEM, [GOOD, BAD], aggregate="mean")
    assert [i for i, _ in with_generator] == [i for i, _ in with_list]
    assert [s for _, s in with_generator] == pytest.approx([s for _, s in with_list], abs=1e-5)
    assert score_many(prm, [(PROBLEM, iter(GOOD))])[0] == pytest.approx(prm.score_steps(PROBLEM, GOOD), abs=1e-5)


@pytest.mark.parametrize("empty", ["", "   \n\t ", []])
def test_a_solution_with_no_step_is_judged_as_one_empty_step_not_scored_1(prm, empty):
    verdict = prm.score_steps(PROBLEM, [""])[0]  # the model's verdict on an empty step
    assert 0.0 < verdict < 1.0
    assert prm.score_steps(PROBLEM, empty) == []  # no step, no step score
    for aggregate in ("min", "product", "mean", "last", "geometric_mean"):
        assert prm.score_solution(PROBLEM, empty, aggregate=aggregate) == pytest.approx(verdict, abs=1e-5), aggregate
    assert prm.score_solution(PROBLEM, empty, aggregate="first_error") == float(verdict >= 0.5)
    assert prm.score_solution(PROBLEM, empty, context="full") == pytest.approx(
        prm.score_steps(PROBLEM, [""], context="full")[0], abs=1e-5)
    ranked = prm.rerank(PROBLEM, [GOOD, empty, BAD], aggregate="min")
    assert dict(ranked)[1] == pytest.approx(verdict, abs=1e-5)
    good, bad = (prm.score_solution(PROBLEM, s) for s in (GOOD, BAD))
    expected = sorted(range(3), key=lambda i: (-(good, verdict, bad)[i], i))
    assert [i for i, _ in ranked] == expected  # where the model puts it, not first by default
    scores, reward = steps_and_reward(prm, PROBLEM, empty)  # the server's pieces agree with score_solution
    assert scores == [] and reward == pytest.approx(verdict, abs=1e-5)
    assert solution_scores(prm, [(PROBLEM, empty), (PROBLEM, GOOD)]) == pytest.approx([verdict, good], abs=1e-5)


def test_a_text_is_split_and_cleaned_like_a_list_of_steps(prm):
    # A list is cleaned step by step (markers, <<calc>>, #### X); a text now is too, after splitting, so a client
    # sending split(text) to the server (which cleans each step) gets what the local model gives for the text.
    text = "Step 1: He starts with 3 apples.\nStep 2: 3 + 4 = <<3+4=7>>7\nso 7 in all.\nStep 3: #### 7"
    assert prm.score_steps(PROBLEM, text) == pytest.approx(prm.score_steps(PROBLEM, split(text)), abs=1e-5)
    assert prm.score_steps(PROBLEM, text) == pytest.approx(
        prm.score_steps(PROBLEM, ["He starts with 3 apples.", "3 + 4 = 7 so 7 in all.", "The answer is: 7"]), abs=1e-5)


def test_a_str_of_candidates_is_refused_not_ranked_by_character(prm):
    with pytest.raises(ValueError, match="^candidates must be a list of strings, got str$"):  # check_candidates'
        prm.rerank(PROBLEM, "abc")
    assert [i for i, _ in prm.rerank(PROBLEM, ["abc"])] == [0]  # a list of one text is one candidate


def test_wrong_types_name_the_argument_and_the_candidate(prm):
    with pytest.raises(TypeError, match="^problem is NoneType, not str$"):
        prm.score_steps(None, GOOD)
    with pytest.raises(TypeError, match="^problem is int, not str$"):
        prm.score_solution(3, GOOD)
    with pytest.raises(TypeError, match="^problem is NoneType, not str$"):
        prm.rerank(None, [GOOD])
    with pytest.raises(TypeError, match="^candidate 0: steps is NoneType, not a string or a list of strings$"):
        prm.rerank(PROBLEM, [None, ["b"]])
    with pytest.raises(TypeError, match=r"^candidate 1: steps\[1\] is int, not str$"):
        prm.rerank(PROBLEM, [["a"], ["b", 3]])
    with pytest.raises(TypeError, match=r"^steps\[0\] is bytes, not str$"):
        prm.score_steps(PROBLEM, [b"a"])
    with pytest.raises(TypeError, match="^steps is bytes, not a string or a list of strings$"):
        prm.score_steps(PROBLEM, b"a")
    with pytest.raises(TypeError, match="^item 1: steps is NoneType"):
        score_many(prm, [(PROBLEM, GOOD), (PROBLEM, None)])
    with pytest.raises(TypeError, match="^item 0: problem is NoneType, not str$"):
        solution_scores(prm, [(None, GOOD)])


def test_a_threshold_outside_0_1_is_refused_before_scoring(prm):
    for threshold in (float("nan"), 2, -0.1):
        with pytest.raises(ValueError, match="threshold must be a probability in"):
            prm.score_solution(PROBLEM, GOOD, aggregate="first_error", threshold=threshold)
        with pytest.raises(ValueError, match="threshold must be a probability in"):
            prm.rerank(PROBLEM, [GOOD, BAD], aggregate="first_error", threshold=threshold)
