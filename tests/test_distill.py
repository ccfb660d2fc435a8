"""Distillation: filters, exporters (round trip), held-out split (unit tests with scripted backends)."""

from __future__ import annotations

import json

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
