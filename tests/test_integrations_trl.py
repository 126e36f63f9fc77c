"""tinyrm.integrations.trl.PairwiseReward: grouping, scales, costs, and TRL's GRPOTrainer really using it."""

from __future__ import annotations

import math

import pytest

from tinyrm.integrations.trl import PairwiseReward, as_text
from tinyrm.pairwise.groups import score_groups, win_rates
from tinyrm.pairwise.rank import knockout, round_robin

from .integration_helpers import save_opinionated_bert, save_tiny_causal_lm

PROMPTS = ["What is 2 + 2?", "Name a colour."]
ANSWERS = {PROMPTS[0]: ["4", "It is 4.", "five", "22, I think", "no idea at all"],
           PROMPTS[1]: ["Blue.", "A deep green.", "Seven.", "I will not say."]}


class Counting:
    """A scorer that counts the compare_batch calls and pairs it forwards."""

    def __init__(self, scorer) -> None:
        self.scorer, self.calls, self.pairs = scorer, 0, 0

    def compare_batch(self, items, batch_size=32, both_orders=None):
        items = list(items)
        self.calls += 1
        self.pairs += len(items)
        return self.scorer.compare_batch(items, batch_size=batch_size, both_orders=both_orders)


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory) -> str:
    return save_opinionated_bert(tmp_path_factory.mktemp("opinionated-bert"))


@pytest.fixture(scope="module")
def rm(rm_path):
    from tinyrm import load

    rm = load(rm_path)
    rm.engine.config.precision = "fp32"  # scores compared across differently padded batches below
    return rm


def grpo_batch(num_generations: int) -> tuple[list[str], list[str]]:
    """prompts, completions as GRPO passes them: each prompt repeated, its completions next to each other."""
    prompts, completions = [], []
    for prompt in PROMPTS:
        prompts += [prompt] * num_generations
        completions += ANSWERS[prompt][:num_generations]
    return prompts, completions


# ------------------------------------------------------------------------------------------- unit behaviour
def test_as_text_turns_conversations_into_text():
    assert as_text("plain") == "plain"
    assert as_text([{"role": "user", "content": "Hi?"}]) == "Hi?"
    assert as_text({"role": "assistant", "content": "Hello."}) == "Hello."
    assert as_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]) == \
        "system: Be brief.\n\nuser: Hi?"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert as_text(parts) == "What is this?"
    assert as_text([{"role": "assistant", "content": None}]) == ""
    with pytest.raises(TypeError):
        as_text(42)


@pytest.mark.parametrize("method", ["round_robin", "knockout"])
def test_group_scores_follow_the_models_ranking(rm, method):
    reward = PairwiseReward(Counting(rm), method=method)
    prompts, completions = grpo_batch(4)
    rewards = reward(prompts, completions)
    assert len(rewards) == 8 and all(0.0 <= r <= 1.0 for r in rewards)
    assert len({round(r, 4) for r in rewards}) == 8  # the opinionated model tells them apart
    n, groups = 4, 2
    if method == "round_robin":  # one call for every pair of every group
        assert reward.scorer.calls == 1 and reward.scorer.pairs == groups * n * (n - 1) // 2
        assert reward.last_stats == {"completions": 8, "groups": 2, "comparisons": 12, "calls": 1}
    else:  # one call per round for all groups: log2(4) = 2 rounds, n - 1 matches per group
        assert reward.scorer.calls == 2 and reward.scorer.pairs == groups * (n - 1)
    for g, prompt in enumerate(PROMPTS):
        mine = rewards[g * n:(g + 1) * n]
        if method == "round_robin":
            result = round_robin(rm, prompt, ANSWERS[prompt][:n])
            assert mine == pytest.approx(win_rates(result.scores), abs=1e-6)  # batched apart: fp32 noise
            assert sum(mine) / n == pytest.approx(0.5)  # win rates average 0.5 in a group
            assert sorted(range(n), key=lambda i: -mine[i]) == result.ranking
        else:
            assert max(range(n), key=lambda i: mine[i]) == knockout(rm, prompt, ANSWERS[prompt][:n]).ranking[0]


def test_knockout_strengths_fit_every_match_played(rm):
    """A bracket is a tree, so the strengths reproduce each match's P(win) exactly: loser = winner - logit(P)."""
    prompt, candidates = PROMPTS[0], ANSWERS[PROMPTS[0]]  # 5: a bye in the first round

    class Recording(Counting):
        played: list = []

        def compare_batch(self, items, batch_size=32, both_orders=None):
            probs = super().compare_batch(items, batch_size, both_orders)
            self.played += list(zip(items, probs))
            return probs

    recording = Recording(rm)
    result = score_groups(recording, [(prompt, candidates)], "knockout")
    theta, scores = result.strengths[0], result.scores[0]
    assert recording.calls == result.calls == 3 and len(recording.played) == result.comparisons == 4
    for (_, a, b), p in recording.played:
        gap = theta[candidates.index(a)] - theta[candidates.index(b)]
        assert gap == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    assert sorted(range(5), key=lambda i: -theta[i]) == sorted(range(5), key=lambda i: -scores[i])
    assert max(range(5), key=lambda i: scores[i]) == knockout(rm, prompt, candidates).ranking[0]


def test_groups_are_found_wherever_the_prompts_sit(rm):
    """Online DPO passes prompts twice over ([p0, p1, p0, p1]): the same groups, the same rewards."""
    prompts, completions = grpo_batch(2)
    contiguous = PairwiseReward(rm)(prompts, completions)
    order = [0, 2, 1, 3]
    interleaved = PairwiseReward(rm)([prompts[i] for i in order], [completions[i] for i in order])
    assert interleaved == pytest.approx([contiguous[i] for i in order], abs=1e-9)
    assert interleaved[0] + interleaved[2] == pytest.approx(1.0)  # a pair's two win rates add up to 1


def test_identical_completions_are_judged_once_and_share_a_score(rm):
    counting = Counting(rm)
    rewards = PairwiseReward(counting)(["p"] * 4, ["same", "other", "same", "same"])
    assert counting.pairs == 1 and rewards[0] == rewards[2] == rewards[3]
    assert rewards[0] + rewards[1] == pytest.approx(1.0)
    assert PairwiseReward(rm)(["alone"], ["one completion"]) == [0.5]  # a group of one carries no signal


def test_conversational_inputs_score_like_their_text(rm):
    prompts, completions = grpo_batch(3)
    plain = PairwiseReward(rm)(prompts, completions)
    chat = PairwiseReward(rm)([[{"role": "user", "content": p}] for p in prompts],
                              [[{"role": "assistant", "content": c}] for c in completions])
    assert chat == pytest.approx(plain, abs=1e-9)


def test_reference_key_scores_each_completion_against_its_row(rm):
    prompts, completions = grpo_batch(2)
    references = ["4", "4", None, "Blue."]
    counting = Counting(rm)
    reward = PairwiseReward(counting, reference_key="answer")
    assert reward.__name__ == "tinyrm_vs_answer"
    rewards = reward(prompts, completions, answer=references, trainer_state=None, completion_ids=[[1]] * 4)
    assert counting.calls == 1 and rewards[2] is None
    expected = rm.compare_batch([(prompts[i], completions[i], references[i]) for i in (0, 1, 3)])
    assert [rewards[i] for i in (0, 1, 3)] == pytest.approx(expected, abs=1e-6)
    assert rewards[0] == pytest.approx(0.5)  # "4" against the reference "4"
    # Groups of one are fine here: the reference is the other side.
    assert reward(["p"], ["x"], answer=["y"]) == pytest.approx(rm.compare_batch([("p", "x", "y")]), abs=1e-6)
    with pytest.raises(KeyError, match="'answer' is not a dataset column"):
        reward(prompts, completions, solution=references)


def test_a_reference_column_that_is_not_a_list_is_refused():
    class Unused:
        def compare_batch(self, items, batch_size=32, both_orders=None):
            raise AssertionError("nothing should be scored")

    reward = PairwiseReward(Unused(), reference_key="ref")
    for column in ("ab", b"ab", {"0": "a", "1": "b"}, 7, None):  # "ab" gave each completion one character
        with pytest.raises(TypeError, match="'ref': the column must be a list with one reference per completion, got"):
            reward(["p", "p"], ["a", "b"], ref=column)


def test_arguments_are_checked(rm, rm_path):
    with pytest.raises(ValueError, match="unknown method"):
        PairwiseReward(rm, method="swiss")
    with pytest.raises(TypeError, match="compare_batch"):
        PairwiseReward(object())
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        PairwiseReward(rm)(["a", "b"], ["x"])
    from_path = PairwiseReward(rm_path, method="knockout", name="judge")
    assert from_path.__name__ == "judge" and "knockout" in repr(from_path)
    pytest.importorskip("trl")
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(PairwiseReward(rm)) == "tinyrm_round_robin"  # what TRL logs it as


def test_reward_client_of_a_running_server_gives_the_same_rewards(rm):
    from tinyrm.serving.app import ServeConfig
    from tinyrm.serving.client import RewardClient

    from .test_serve import running_server

    prompts, completions = grpo_batch(3)
    local = PairwiseReward(rm)(prompts, completions)
    with running_server(rm, ServeConfig(api_key="k", max_wait_ms=1)) as url, RewardClient(url, api_key="k") as client:
        assert PairwiseReward(client)(prompts, completions) == pytest.approx(local, abs=1e-5)


# --------------------------------------------------------------------------------------------- TRL trainers
@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


def _grpo_args(output_dir, steps: int):
    from trl import GRPOConfig

    # 2 prompts x 4 completions per step; fp32 on the CPU; nothing saved or reported.
    return GRPOConfig(output_dir=str(output_dir), num_generations=4, per_device_train_batch_size=8,
                      max_completion_length=8, max_steps=steps, logging_steps=1, use_cpu=True, bf16=False,
                      report_to="none", save_strategy="no", seed=0)


def test_grpo_trainer_logs_the_rewards_pairwise_reward_returns(rm, policy, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOTrainer

    returned: list[list[float]] = []

    class Recording(PairwiseReward):
        def __call__(self, prompts, completions, **kwargs):
            assert {"completion_ids", "trainer_state"} <= set(kwargs)
            returned.append(super().__call__(prompts, completions, **kwargs))
            return returned[-1]

    reward = Recording(rm)
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=_grpo_args(tmp_path, 2), train_dataset=dataset)
    trainer.train()

    steps = [h for h in trainer.state.log_history if "rewards/tinyrm_round_robin/mean" in h]
    assert [h["step"] for h in steps] == [1, 2] and len(returned) == 2
    for logged, rewards in zip(steps, returned):
        assert len(rewards) == 8 and all(0.0 <= r <= 1.0 for r in rewards)
        assert logged["rewards/tinyrm_round_robin/mean"] == pytest.approx(sum(rewards) / 8, abs=1e-6)
        std = math.sqrt(sum((r - sum(rewards) / 8) ** 2 for r in rewards) / 7)
        assert logged["rewards/tinyrm_round_robin/std"] == pytest.approx(std, abs=1e-5)
        assert logged["tinyrm_round_robin/comparisons"] <= 12  # 2 groups x 6 pairs (fewer if completions repeat)
    # The latest step's completions as the trainer logged them: a fresh PairwiseReward on those texts
    # returns the per-completion rewards the trainer recorded (float32 there).
    logs = trainer._logs  # TRL 1.16: the generation batch behind the latest log line
    fresh = PairwiseReward(rm)(list(logs["prompt"]), list(logs["completion"]))
    assert list(logs["rewards"]["tinyrm_round_robin"]) == pytest.approx(fresh, abs=1e-6)
    assert len({round(r, 4) for r in fresh}) > 1  # the comparison is not between constants


def test_a_saved_classifier_baseline_folder_is_a_grpo_reward_model(tiny_bert, pairs_file, policy, tmp_path):
    """The classifier baseline saves a plain AutoModelForSequenceClassification (num_labels=1), which TRL
    loads itself from the path and scores prompt + completion with."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOTrainer

    from tinyrm.train import TrainConfig, train

    folder = tmp_path / "classifier-rm"
    train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(folder), objective="classifier",
                      pooling="cls", batch_size=4, micro_batch_size=4, max_steps=1, max_length=64, save_steps=0,
                      precision="fp32"))
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = GRPOTrainer(model=policy, reward_funcs=str(folder), args=_grpo_args(tmp_path / "out", 1),
                          train_dataset=dataset)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/classifier-rm/mean" in h]
    assert len(logged) == 1 and math.isfinite(logged[0]["rewards/classifier-rm/mean"])
    assert logged[0]["rewards/classifier-rm/std"] > 0
