"""Debiased judges and the calibration gate, with judges of known behaviour: one that always picks
the first slot, one that always knows the right answer, one that answers at random, and the real
embedded model reading option labels."""

from __future__ import annotations

import math
import random
import re

import pytest

from character.judges import calibrate, label_probs
from character.preferences import trait_verdicts
from character.ratings import bootstrap
from character.scorers import calibrate_pairwise, calibrate_scores, pairwise, rubric_conversation, score_batch
from character.types import Match, Message
from conftest import Scripted


class LabelJudge:
    """A judge that scores option labels (the label path), by a rule over the question it is shown."""
    name = "fake/labels"
    supports_logprobs = False
    supports_prefill = False

    def __init__(self, rule):
        self.rule = rule
        self.calls = 0

    def next_token_logprobs(self, conversations, labels):
        self.calls += 1
        return [[math.log(max(1e-9, p)) for p in self.rule(c[-1].content, labels)] for c in conversations]


def first_slot(text, labels):
    return [0.9 if label == labels[0] else 0.1 / (len(labels) - 1) for label in labels]


def knows_better(text, labels):
    """Prefers the slot whose answer says GOOD (pairwise), or whose 1-5 score fits the answer."""
    if "<answer A>" in text:
        good_first = "GOOD" in text.split("<answer A>")[1].split("</answer A>")[0]
        return [0.8, 0.2] if good_first else [0.2, 0.8]
    return [0.05, 0.05, 0.1, 0.2, 0.6] if "GOOD" in text else [0.6, 0.2, 0.1, 0.05, 0.05]


def random_rule(seed):
    rng = random.Random(seed)
    return lambda text, labels: [rng.random() for _ in labels]


def known(n=20):
    return [(f"prompt {i}", f"GOOD answer {i}", f"bad answer {i}") for i in range(n)]


def test_a_first_slot_judge_comes_out_even_and_fails_calibration():
    judge = LabelJudge(first_slot)
    res = pairwise(judge, "- I am bold.", "character", known(), "trained", "base")
    assert res.path == "labels" and res.failures == 0
    assert all(m.score == pytest.approx(0.5) and m.winner == "tie" for m in res.matches)
    cal = calibrate_pairwise(judge, judge.name, "- I am bold.", "character", known())
    assert cal.accuracy == pytest.approx(0.5) and not cal.passed and cal.low < 0.5
    assert cal.first_slot == pytest.approx(0.9)
    assert cal.headline == (f"no signal (judge failed calibration: accuracy 0.50 [{cal.low:.2f}, {cal.high:.2f}] "
                            "on 20 known pairs)")


def test_a_judge_that_knows_the_answer_passes():
    cal = calibrate_pairwise(LabelJudge(knows_better), "fake", "- I am bold.", "character", known())
    assert cal.accuracy == 1.0 and cal.passed and cal.low > 0.8
    assert cal.first_slot == pytest.approx(0.5)  # it follows the answer, not the slot
    assert cal.headline.startswith("calibrated: accuracy 1.00")


def test_a_random_judge_fails():
    for seed in range(5):
        cal = calibrate_pairwise(LabelJudge(random_rule(seed)), "fake", "- x", "character", known(40))
        assert not cal.passed, cal


def test_text_judge_that_always_answers_a_ties_and_fails():
    judge = Scripted(['{"better": "A"}'] * 40)
    cal = calibrate_pairwise(judge, "fake/text", "- x", "character", known())
    assert cal.path == "text" and cal.accuracy == 0.5 and not cal.passed and cal.first_slot == 1.0


def test_rubric_scores_are_expected_values_and_calibrate():
    judge = LabelJudge(knows_better)
    convs = [rubric_conversation("Answer:", "GOOD one", "How bold?"), rubric_conversation("Answer:", "meh", "How bold?")]
    good, bad = score_batch(judge, convs)
    assert good.score == pytest.approx(1 * .05 + 2 * .05 + 3 * .1 + 4 * .2 + 5 * .6)
    assert bad.score == pytest.approx(1 * .6 + 2 * .2 + 3 * .1 + 4 * .05 + 5 * .05)
    cal = calibrate_scores(judge, "fake", "rubric", convs * 6)
    assert cal.passed and cal.accuracy == 1.0
    flat = calibrate_scores(LabelJudge(lambda t, labels: [0.2] * 5), "fake", "rubric", convs * 6)
    assert flat.accuracy == 0.5 and not flat.passed  # scores 3 for everything: no signal


def test_trait_verdicts_debias_position_and_keep_neither():
    items = [(f"answer {i}", "bold", "calm") for i in range(6)]
    path, vs = trait_verdicts(LabelJudge(first_slot), items)
    assert path == "labels" and all(v["winner"] == "tie" and v["p_a"] == pytest.approx(0.5) for v in vs)

    def says_bold(text, labels):  # picks whichever option is "bold"
        a = re.search(r"A\) (\w+)", text).group(1)
        return [0.7, 0.2, 0.1] if a == "bold" else [0.2, 0.7, 0.1]
    _, vs = trait_verdicts(LabelJudge(says_bold), items)
    assert all(v["winner"] == "a" and v["p_a"] == pytest.approx(0.7 / 0.9) for v in vs)
    _, vs = trait_verdicts(LabelJudge(lambda t, labels: [0.1, 0.1, 0.8]), items)
    assert all(v["winner"] == "neither" for v in vs)


def test_wilson_gate_needs_enough_pairs():
    from character.stats import wilson
    from scipy.stats import binomtest
    ci = binomtest(7, 10).proportion_ci(method="wilson")
    assert wilson(7, 10) == pytest.approx((ci.low, ci.high))  # the same formula as scipy's, for whole counts
    assert not calibrate("x", "j", "labels", [1.0, 1.0, 1.0, 0.5], []).passed  # a tie is half, not rounded up
    assert not calibrate("x", "j", "labels", [1.0] * 3, []).passed  # 3 of 3: interval still reaches below 0.5
    assert calibrate("x", "j", "labels", [1.0] * 8, []).passed
    assert not calibrate("x", "j", "labels", [], []).passed


def test_bootstrap_gives_no_rating_to_an_item_a_resample_left_out():
    ms = [Match(a="a", b="b", winner="tie") for _ in range(29)] + [Match(a="z", b="a", winner="a")]
    z = next(r for r in bootstrap(ms, rounds=200, seed=1) if r.item == "z")
    assert z.rating > 1000 and z.low > 1000  # a round without z's one match no longer counts z as 1000


@pytest.mark.slow
def test_embedded_judge_reads_labels_in_one_pass_like_the_scorer():
    from character.inference import get_backend
    judge = get_backend("embedded")
    convs = [[Message(role="user", content=f"Which is larger, {a} or {b}? Reply \"A\" or \"B\".")]
             for a, b in (("A) 3", "B) 7"), ("A) 10", "B) 2"), ("A) one hundred and twenty", "B) five"))]
    autocast = judge.autocast
    try:  # one forward pass per conversation, left-padded batch: float32, and bf16 autocast (the CPU default)
        judge.autocast = False
        fast = label_probs(judge, convs, ["A", "B"])
        judge.autocast = True
        fast_bf16 = label_probs(judge, convs, ["A", "B"])
    finally:
        judge.autocast = autocast

    class ViaScorer:  # the same judge through the generic path (float32): log-prob of each label as the answer
        supports_logprobs = True
        logprobs = staticmethod(judge.logprobs)
    slow = label_probs(ViaScorer(), convs, ["A", "B"])
    for f, b, s in zip(fast, fast_bf16, slow, strict=True):
        assert f["A"] + f["B"] == pytest.approx(1.0)
        assert f["A"] == pytest.approx(s["A"], abs=1e-3)
        # bf16 rounding moves a label probability by about 0.01 (RESULTS.md: at most 0.018 on 26 judge prompts)
        assert b["A"] == pytest.approx(s["A"], abs=0.05)
