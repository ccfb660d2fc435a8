"""Prompt mixing, dedupe and expansion parsing."""

from __future__ import annotations

from character import constitution as C
from character.prompts import (build_prompts, expand_questions, generic_pool, is_near_duplicate,
                               names_persona_or_trait, parse_numbered, split_counts)
from character.types import Completion


def test_generic_pool_is_large_and_unique():
    pool = generic_pool()
    assert len(pool) >= 200
    assert len({p.lower() for p in pool}) == len(pool)


def test_mix_counts_sources_and_seed():
    c = C.load("pirate")
    mix = {"constitution": 0.5, "templates": 0.25, "generic": 0.25}
    a = build_prompts(c, 100, mix, seed=3, hint_rate=0.5)
    b = build_prompts(c, 100, mix, seed=3, hint_rate=0.5)
    assert [p.model_dump() for p in a] == [p.model_dump() for p in b]
    assert [p.id for p in build_prompts(c, 100, mix, seed=4)] != [p.id for p in a]
    counts = {s: sum(p.source == s for p in a) for s in ("constitution", "templates", "generic")}
    assert counts == {"constitution": 50, "templates": 25, "generic": 25}
    assert all(p.trait for p in a if p.source == "constitution")
    assert len({p.id for p in a}) == 100
    hinted = sum("Captain Calico" in p.text for p in a if p.source == "templates")
    assert 0 < hinted < 25


def test_cycling_a_small_source_gives_new_ids():
    c = C.load("pirate")
    ps = build_prompts(c, 100, {"constitution": 1.0}, seed=0)
    assert len(ps) == 100 and len({p.id for p in ps}) == 100
    assert len({p.text for p in ps}) == len(c.questions)  # 40 questions, cycled


def test_split_counts_adds_up():
    assert sum(split_counts(7, {"constitution": 1, "generic": 1, "templates": 1}).values()) == 7
    assert split_counts(10, {"generic": 1.0})["generic"] == 10


def test_dedupe_and_persona_filters():
    assert is_near_duplicate("How do I boil an egg quickly?", ["How do I boil an egg?"])
    assert not is_near_duplicate("What is the tallest mountain?", ["How do I boil an egg?"])
    c = C.load("pirate")
    trait = c.traits[0].trait
    assert names_persona_or_trait("What would a pirate say about taxes?", c, trait)
    assert names_persona_or_trait("Show me your trait, please.", c, trait)
    assert not names_persona_or_trait("How do I plan a trip to Rome?", c, trait)
    assert parse_numbered("1. Hi there?\n2) what now.\nnot this\n3. 42 is no start?") == ["Hi there?", "what now."]


def test_expansion_parses_dedupes_and_filters():
    class Scripted:
        name = "fake/expander"
        supports_prefill = False

        def generate(self, convs, params, json_schema=None):
            return [[Completion(text="1. Which knot works best for tying camping gear?\n2. Which knot works best for tying camping gear now?\n"
                                     "3. Would a pirate like my boat?\n4. What's a good book for a long train ride?")]
                    for _ in convs]

    c = C.load("pirate")
    out = expand_questions(c, Scripted(), per_trait=5, rounds=1)
    assert len(out) == len(c.traits)
    for qs in out.values():
        assert qs == ["Which knot works best for tying camping gear?", "What's a good book for a long train ride?"]


def test_traits_without_questions_get_written_ones_in_the_constitution_share():
    """A trait imported with no questions: the expander is asked for that trait only, without an empty
    examples block, and its written questions are drawn in the constitution's share as source 'expanded'."""
    seen = []

    class Scripted:
        name = "fake/expander"
        supports_prefill = False

        def generate(self, convs, params, json_schema=None):
            seen.extend(convs)
            return [[Completion(text="1. Which knot works best for tying camping gear?\n2. Can you help me write a "
                                     "short toast?")] for _ in convs]

    c = C.from_data({"name": "bare", "traits": [{"trait": "I am calm.", "questions": ["How are you today?"]},
                                                {"trait": "I notice small kindnesses.",
                                                 "clarification": "Good news first."}]})
    written = expand_questions(c, Scripted(), per_trait=2, rounds=1, only=["I notice small kindnesses."])
    assert list(written) == ["I notice small kindnesses."] and len(seen) == 1
    asked = seen[0][-1].content
    assert "Good news first." in asked and "Examples:" not in asked
    ps = build_prompts(c, 30, {"constitution": 1.0}, seed=0, written=written)
    by_trait = {t: [p for p in ps if p.trait == t] for t in ("I am calm.", "I notice small kindnesses.")}
    assert by_trait["I am calm."] and all(p.source == "constitution" for p in by_trait["I am calm."])
    assert by_trait["I notice small kindnesses."] and all(p.source == "expanded" for p in by_trait["I notice small kindnesses."])
    assert {p.text for p in by_trait["I notice small kindnesses."]} == set(written["I notice small kindnesses."])
    both = build_prompts(c, 30, {"constitution": 0.5, "expanded": 0.5}, seed=0, expanded=written, written=written)
    assert len({p.id for p in both}) == 30  # a written question drawn in both shares is two prompts
