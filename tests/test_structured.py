"""Structured output (unit tests with a scripted backend) and model-spec parsing."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from character.errors import CharacterError, GenerationError, MissingDependencyError, ModelSpecError
from character.inference import get_backend, parse_spec
from character.inference.structured import (StructuredFailure, extract_json, generate_structured,
                                            generate_structured_batch)
from character.types import Message
from conftest import Scripted


class Verdict(BaseModel):
    winner: str
    score: int


def convo(text="Judge this."):
    return [Message(role="user", content=text)]


def test_extract_json_ignores_prose_and_fences():
    assert extract_json('Sure! ```json\n{"a": [1, 2]}\n``` done') == {"a": [1, 2]}
    assert extract_json("x {broken {\"b\": 1}") == {"b": 1}
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_reask_with_validation_error_then_success():
    b = Scripted(['{"winner": "a"}', 'ok: {"winner": "a", "score": 4}'])
    out = generate_structured(b, convo(), Verdict)
    assert out == Verdict(winner="a", score=4)
    second_ask = b.calls[1][0][0]
    assert "score" in second_ask[-1].content and "not valid" in second_ask[-1].content
    assert b.calls[0][1]["title"] == "Verdict"  # the schema is offered to the backend


def test_failures_are_recorded_not_dropped():
    b = Scripted(['{"winner": "a", "score": 1}', "nope", "still nope", "never"])
    out = generate_structured_batch(b, [convo("one"), convo("two")], Verdict, retries=2)
    assert out[0] == Verdict(winner="a", score=1)
    assert isinstance(out[1], StructuredFailure) and out[1].attempts == 3 and out[1].raw == "never"
    with pytest.raises(GenerationError, match="no valid Verdict after 2 tries"):
        generate_structured(Scripted(["x", "y"]), convo(), Verdict, retries=1)


def test_a_reask_draws_with_another_seed_and_draft_patterns_bound_each_word():
    import re
    from character.constitution import QuestionsDraft, TraitsDraft
    from character.inference.structured import local_schema
    from character.types import SamplingParams
    b = Scripted(["nope", '{"winner": "a", "score": 1}'])
    generate_structured(b, convo(), Verdict, SamplingParams(seed=7))
    assert [p.seed for p in b.params] == [7, 1007]
    item = local_schema(QuestionsDraft)["properties"]["questions"]["items"]["pattern"]
    assert re.fullmatch(item, "How did you make your pizza?")
    assert not re.fullmatch(item, "How did ResponseFormatTypeCodeListException go?")  # a runaway "word"
    trait = local_schema(TraitsDraft)["properties"]["traits"]["items"]["pattern"]
    assert re.fullmatch(trait, "I notice small details.") and not re.fullmatch(trait, "I am.")
    assert "pattern" not in str(TraitsDraft.model_json_schema())  # servers get the plain schema


@pytest.mark.parametrize("spec", ["", "gpt-4", "foo/bar", "openai/", "hf"])
def test_bad_specs(spec):
    with pytest.raises(ModelSpecError, match="model="):
        parse_spec(spec)


def test_good_specs():
    assert parse_spec("embedded") == ("embedded", "")
    assert parse_spec("hf/HuggingFaceTB/SmolLM2-135M-Instruct") == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert parse_spec("openai/gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_spec("tinker/tinker://run/sampler_weights/final") == ("tinker", "tinker://run/sampler_weights/final")


def test_missing_extras_and_keys_name_the_fix(monkeypatch):
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(MissingDependencyError, match=r"pip install -e '.\[gpu\]'"):
            get_backend("vllm/some-model")
    if importlib.util.find_spec("tinker") is None:
        with pytest.raises(MissingDependencyError, match=r"pip install -e '.\[tinker\]'"):
            get_backend("tinker/some-model")
    with pytest.raises(CharacterError, match="OPENAI_API_KEY"):
        get_backend("openai/gpt-4o-mini")


def test_unknown_local_model_is_one_line(tmp_path):
    with pytest.raises(ModelSpecError) as e:
        get_backend(f"hf/{tmp_path}/nothing-here")
    assert "\n" not in str(e.value) and "cannot load" in str(e.value)
