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
