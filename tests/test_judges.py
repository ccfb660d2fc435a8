"""LLM judges and revealed preferences on scripted backends: order swapping, failures, matches."""

from __future__ import annotations

from character.preferences import (embody_conversation, load_traits, position_bias, revealed_preferences,
                                   trait_pairs, verdict_to_winner)
from character.scorers import aggregate_scores, combine_orders, evaluate_conversations, pairwise, trait_rubric
from character.types import Message, SamplingParams
from conftest import Scripted


def test_combine_orders_counts_agreement_as_a_win_and_disagreement_as_a_tie():
    # order 1 shows (a, b); order 2 shows (b, a)
    assert combine_orders("A", "B") == "a"      # both orders prefer a
    assert combine_orders("B", "A") == "b"      # both orders prefer b
    assert combine_orders("A", "A") == "tie"    # position bias: always the first shown
    assert combine_orders("B", "B") == "tie"
    assert combine_orders(None, "A") is None    # a failed order is a failure, not a tie


def test_pairwise_judges_both_orders_and_counts_failures():
    # three items, two verdicts each (order 1, order 2); the third has an unparsable verdict twice
    v = '{{"better": "{}"}}'.format
    judge = Scripted([v("A"), v("B"),          # item 1: a wins in both orders
                      v("A"), v("A"),          # item 2: disagreement -> tie
                      "maybe", v("B"),         # item 3 order 1 unparsable ...
                      "still not json"])       # ... and again on the re-ask -> failure
    items = [("p1", "x1", "y1"), ("p2", "x2", "y2"), ("p3", "x3", "y3")]
    res = pairwise(judge, "- I am bold.", "coherence", items, "trained", "base")
    assert res.path == "text"
    assert [(m.prompt, m.winner) for m in res.matches] == [("p1", "a"), ("p2", "tie")]
    assert res.failures == 1 and res.first_slot == [0.5, 1.0]
    first_batch = judge.calls[0][0]
    assert len(first_batch) == 6
    # order 2 shows the answers swapped
    assert "<answer A>\nx1" in first_batch[0][-1].content and "<answer A>\ny1" in first_batch[1][-1].content


def test_malformed_rubric_output_is_a_failure_not_a_drop():
    # answer 1: ok; answer 2: not JSON, then out of range on the re-ask
    judge = Scripted(['{"score": 4, "rationale": "clear"}', "seven", '{"score": 9}'])
    rows = trait_rubric(judge, ["I am bold."], [("p", "a1"), ("p", "a2")])
    assert [r["score"] for r in rows] == [4, None]
    agg = aggregate_scores(rows, "trait")
    assert agg["I am bold."] == {"mean": 4.0, "n": 1, "failures": 1}


def test_conversation_evaluators_score_each_conversation_with_each_evaluator():
    conv = [Message(role="user", content="hi"), Message(role="assistant", content="Ahoy!")]
    judge = Scripted(['{"score": 5}', '{"score": 3}', '{"score": 4}'])
    rows = evaluate_conversations(judge, "- I am a pirate.", [conv])
    assert {r["evaluator"]: r["score"] for r in rows} == {"persona_consistency": 5, "helpfulness": 3, "safety": 4}
    assert "ASSISTANT: Ahoy!" in judge.calls[0][0][0][-1].content


def test_trait_vocabulary_and_pairs():
    traits = load_traits()
    assert 140 <= len(traits) <= 180 and len(set(traits)) == len(traits)
    assert all(t.isalpha() and t == t.lower() for t in traits)
    pairs = trait_pairs(20, traits, seed=3)
    assert pairs == trait_pairs(20, traits, seed=3) and all(a != b for a, b in pairs)
    msgs = embody_conversation("Plan a picnic.", "blunt", "poetic", "feel")
    assert "blunt or poetic" in msgs[-1].content and "feels most like you" in msgs[-1].content
    assert verdict_to_winner("B", swapped=False) == "b" and verdict_to_winner("B)", swapped=True) == "a"
    assert verdict_to_winner("C", swapped=False) == "neither" and verdict_to_winner("maybe", swapped=True) is None


def test_revealed_preferences_turn_verdicts_into_matches():
    model = Scripted(["answer one", "answer two", "answer three", "answer four"])
    prompts = ["p1", "p2", "p3", "p4"]
    traits = ["bold", "calm", "shy", "witty"]
    pairs = trait_pairs(4, traits, seed=0)
    # each answer is judged in both orders (order 2 shows trait b as option A)
    v = '{{"choice": "{}"}}'.format
    judge = Scripted([v("A"), v("B"),      # 1: trait a in both orders -> a wins
                      v("C"), v("C"),      # 2: neither, twice
                      v("A"), v("A"),      # 3: always the first slot -> the orders disagree: a tie
                      "???", v("B"),       # 4: order 1 does not parse ...
                      "!!!"])              # ... nor on the re-ask: a counted failure, not 'neither'
    samples, matches, failures = revealed_preferences(model, judge, prompts, traits, ["feel"],
                                                      SamplingParams(max_tokens=8), "trained", seed=0)
    first, second = judge.calls[0][0][0][-1].content, judge.calls[0][0][1][-1].content
    assert f"A) {pairs[0][0]}\nB) {pairs[0][1]}" in first and f"A) {pairs[0][1]}\nB) {pairs[0][0]}" in second
    assert [(m.a, m.b, m.winner) for m in matches] == [(*pairs[0], "a"), (*pairs[2], "tie")]
    assert failures == 1
    assert [s.label for s in samples] == [pairs[0][0], "neither", "tie", "judge_failure"]
    assert position_bias(samples) == 0.75  # (0.5 + 1) / 2: a 'neither' picks no slot, a failure has none
