"""Distillation: filters, exporters (round trip), held-out split (unit tests with scripted backends)."""

from __future__ import annotations

import json

import pytest

from character import constitution as C
from character.distill import (EXPORTERS, from_trl, is_heldout, make_pairs, strip_reasoning, teacher_conversation,
                               to_openai_dpo, to_trl)
from character.types import Completion, Prompt, SamplingParams, stable_id


class Scripted:
    supports_prefill = True
    supports_logprobs = False
    tokenizer = None

    def __init__(self, name, answers):
        self.name = name
        self.answers = answers
        self.seen = []

    def generate(self, convs, params, json_schema=None):
        self.seen += convs
        return [[self.answers[c[-1].content if c[-1].role == "user" else c[-2].content]] for c in convs]


def P(i, text):
    return Prompt(id=f"{i:016x}", text=text, source="generic")


def test_filters_are_counted_and_pairs_built():
    c = C.load("pirate")
    prompts = [P(1, "ok"), P(2, "empty"), P(3, "cut"), P(4, "same"), P(5, "long " * 300)]
    teacher = Scripted("fake/teacher", {"ok": Completion(text="Arr, aye!"), "empty": Completion(text=" "),
                                        "cut": Completion(text="Arr and then", finish_reason="length"),
                                        "same": Completion(text="Same."), prompts[4].text: Completion(text="Arr.")})
    student = Scripted("fake/student", {"ok": Completion(text="Yes."), "empty": Completion(text="Fine."),
                                        "cut": Completion(text="Sure."), "same": Completion(text="Same."),
                                        prompts[4].text: Completion(text="Ok.")})
    pairs, filtered = make_pairs(c, prompts, teacher, student, SamplingParams(), max_prompt_tokens=100)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("ok", "Arr, aye!", "Yes.")]
    assert {f.id: f.reason for f in filtered} == {prompts[1].id: "empty", prompts[2].id: "truncated",
                                                  prompts[3].id: "identical", prompts[4].id: "prompt_too_long"}
    assert teacher.seen[0][0].role == "system" and "Captain Calico" in teacher.seen[0][0].content
    assert [m.role for m in student.seen[0]] == ["user"]
    pairs, filtered = make_pairs(c, prompts[2:3], teacher, student, SamplingParams(), drop_truncated=False)
    assert len(pairs) == 1 and not filtered


def test_reasoning_prefill():
    c = C.load("pirate")
    conv = teacher_conversation(c, "hi", reasoning_prefill=True)
    assert conv[-1].role == "assistant" and conv[-1].content.startswith("<think>")
    assert c.traits[0].trait in conv[-1].content
    assert strip_reasoning("thinking...</think>\n\nArr!") == "Arr!"
    assert strip_reasoning("never closed") is None


def test_exporters_round_trip(tmp_path):
    pairs, _ = make_pairs(C.load("pirate"), [P(1, "ok")], Scripted("t", {"ok": Completion(text="Arr!")}),
                          Scripted("s", {"ok": Completion(text="Yes.")}), SamplingParams())
    p = pairs[0]
    for name, fn in EXPORTERS.items():
        line = json.dumps(fn(p))
        assert json.loads(line) == fn(p), name
    assert from_trl(json.loads(json.dumps(to_trl(p)))) == (p.prompt, p.chosen, p.rejected)
    dpo = to_openai_dpo(p)
    assert dpo["preferred_output"][0]["content"] == p.chosen
    assert dpo["non_preferred_output"][0]["content"] == p.rejected
    assert all(m["role"] != "system" for m in to_trl(p)["prompt"])


def test_heldout_split_is_deterministic():
    ids = [stable_id("pair", i) for i in range(2000)]
    share = sum(is_heldout(i, 0.1) for i in ids) / len(ids)
    assert 0.07 < share < 0.13
    assert [is_heldout(i, 0.1) for i in ids] == [is_heldout(i, 0.1) for i in ids]
    assert not any(is_heldout(i, 0.0) for i in ids)


@pytest.mark.slow
def test_best_of_keeps_the_highest_scoring_candidate_and_the_persona_filter_is_counted(embedded):
    """best_of samples n teacher answers and keeps the one the persona scorer ranks highest (the same
    candidates, by seed, as a direct n-sample call); every score is recorded with its pair; with the filter
    on, a pair whose chosen answer does not score above the rejected one is dropped and counted."""
    from character.distill import reason_counts
    c = C.load("pirate")
    prompts = [P(1, "How do I boil an egg?"), P(2, "Name a colour."), P(3, "What is a budget?")]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    length = lambda ps, answers: [float(len(a)) for a in answers]  # noqa: E731 - a scorer that prefers long answers
    pairs, filtered = make_pairs(c, prompts, embedded, embedded, params, drop_truncated=False, best_of=3,
                                 scorer=length)
    candidates = embedded.generate([teacher_conversation(c, p.text) for p in prompts], params.model_copy(update={"n": 3}))
    assert not filtered and len(pairs) == 3
    for pair, cands in zip(pairs, candidates, strict=True):
        ok = [x.text for x in cands if x.text.strip() and x.text.strip() != pair.rejected.strip()]  # pass the filters
        assert pair.candidate_scores == [float(len(x)) for x in ok]
        assert pair.chosen == max(ok, key=len)
        assert pair.persona_chosen == max(pair.candidate_scores) and pair.persona_rejected == len(pair.rejected)
    short_first = lambda ps, answers: [-float(len(a)) for a in answers]  # noqa: E731
    unfiltered, _ = make_pairs(c, prompts, embedded, embedded, params, drop_truncated=False, scorer=short_first)
    kept, dropped = make_pairs(c, prompts, embedded, embedded, params, drop_truncated=False, persona_filter=True,
                               scorer=short_first)
    assert [p.id for p in kept] == [p.id for p in unfiltered if p.persona_chosen > p.persona_rejected]
    assert reason_counts(dropped) == ({"not_more_in_character": 3 - len(kept)} if len(kept) < 3 else {})
    with pytest.raises(ValueError, match="persona scorer"):
        make_pairs(c, prompts, embedded, embedded, params, best_of=2)


def test_teacher_sees_its_prompt_form_and_voice_examples():
    c = C.load("pirate")
    assert c.examples, "the shipped pirate constitution carries voice examples"
    conv = teacher_conversation(c, "hi")
    assert [m.role for m in conv] == ["system"] + ["user", "assistant"] * len(c.examples) + ["user"]
    assert conv[2].content == c.examples[0].assistant and conv[-1].content == "hi"
    assert [m.role for m in teacher_conversation(c, "hi", voice_examples=False)] == ["system", "user"]
    short = teacher_conversation(c, "hi", form="short")[0].content
    assert short == c.system_prompt.strip()
    last = teacher_conversation(c, "hi", form="traits-last")[0].content
    assert last.index(c.directives[0]) > last.index(c.safety[0]) and c.traits[0].trait in last
