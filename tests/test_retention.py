"""The capability-retention prompts and their checks (if-verifiable's IFEval checkers), on answers
written to pass and to fail each constraint."""

from __future__ import annotations

from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from character.retention import TASKS, Task, check


def test_every_check_is_a_known_ifeval_instruction():
    # if-verifiable skips an unknown instruction id silently, which would make a prompt pass for free
    assert len(TASKS) >= 20 and len({t.prompt for t in TASKS}) == len(TASKS)
    for t in TASKS:
        assert t.checks and all(c[0] in INSTRUCTION_DICT for c in t.checks), t.prompt
        # nltk's punkt data cannot be downloaded here: no prompt may need it
        assert not {c[0] for c in t.checks} & {"length_constraints:number_sentences",
                                                "change_case:capital_word_frequency"}


def by_check(name: str) -> Task:
    return next(t for t in TASKS if [c[0] for c in t.checks] == [name])


def test_checks_pass_and_fail_as_written():
    lower = by_check("change_case:english_lowercase")
    assert check(lower, "call him goldie, a bright little name for a bright little fish.") == (True, True)
    assert check(lower, "Call him Goldie.") == (False, False)
    comma = by_check("punctuation:no_comma")
    assert check(comma, "Eggs and toast with fruit make a fine start.")[0]
    assert not check(comma, "Eggs, toast, and fruit.")[0]
    js = by_check("detectable_format:json_format")
    assert check(js, '{"snacks": ["apple", "nuts"]}')[0] and not check(js, "apple and nuts")[0]
    bullets = by_check("detectable_format:number_bullet_lists")
    assert check(bullets, "* sleep early\n* no screens\n* dark room")[0]
    assert not check(bullets, "* sleep early\n* no screens")[0]
    # loose accepts the answer without a chatty first line; strict does not
    assert check(js, 'Here you go:\n{"snacks": ["apple"]}') == (False, True)


def test_two_constraints_must_both_hold():
    both = next(t for t in TASKS if {c[0] for c in t.checks} == {"startend:quotation", "punctuation:no_comma"})
    assert check(both, '"Exercise keeps the heart strong."')[0]
    assert not check(both, '"Exercise, in short, keeps the heart strong."')[0]
    assert not check(both, "Exercise keeps the heart strong.")[0]
