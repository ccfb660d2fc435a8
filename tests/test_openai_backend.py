"""The OpenAI-compatible backend against a REAL server on loopback: llama-cpp-python serving the
embedded GGUF (started by the `llama_server` fixture)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from character.errors import GenerationError
from character.inference.openai_compat import OpenAIBackend
from character.inference.structured import generate_structured
from character.types import Message, SamplingParams

pytestmark = [pytest.mark.server, pytest.mark.slow]


class Animal(BaseModel):
    name: str = Field(description="an animal's name")
    legs: int = Field(description="how many legs it has")


@pytest.fixture(scope="module")
def backend(llama_server):
    return OpenAIBackend("smollm2", base_url=llama_server, max_concurrency=2, timeout=120)


def test_generate_batch_in_order_with_n(backend):
    convs = [[Message(role="user", content=q)] for q in ("Say hi.", "Name a fruit.", "What is 1+1?")]
    out = backend.generate(convs, SamplingParams(max_tokens=16, temperature=0.7, n=2, seed=3))
    assert [len(o) for o in out] == [2, 2, 2]
    assert all(c.text and c.model == "openai/smollm2" and c.completion_tokens > 0 for o in out for c in o)
    greedy = SamplingParams(max_tokens=16, temperature=0)
    again = backend.generate(convs[1:2], greedy)[0][0].text
    assert again == backend.generate(convs[1:2], greedy)[0][0].text


def test_length_and_stream(backend):
    out = backend.generate([[Message(role="user", content="Write a long poem about rivers.")]],
                           SamplingParams(max_tokens=4, temperature=0))
    assert out[0][0].finish_reason == "length"
    pieces = list(backend.stream([Message(role="user", content="Say hello.")], SamplingParams(max_tokens=12)))
    assert len(pieces) >= 2 and "".join(pieces).strip()


def test_structured_output_is_schema_guided(backend):
    animal = generate_structured(backend, [Message(role="user", content="Describe a dog.")], Animal,
                                 SamplingParams(max_tokens=60, temperature=0.2))
    assert isinstance(animal, Animal) and animal.name
    assert backend.schema_mode in ("json_schema", "json_object")


def test_logprobs_says_why_not(backend):
    with pytest.raises(GenerationError, match="cannot score"):
        backend.logprobs([[Message(role="user", content="x")]], ["y"])


def test_a_judge_on_the_server_reads_option_labels_like_the_local_model(llama_server):
    """label_logprobs: the verdict comes from the server's top_logprobs of the first answer token, and
    agrees with the same model scored locally (the GGUF is a quantised copy, so only roughly)."""
    from character.inference import get_backend
    from character.judges import label_probs, reads_labels
    judge = OpenAIBackend("smollm2", base_url=llama_server, max_concurrency=2, timeout=120, label_logprobs=20)
    assert reads_labels(judge) and not reads_labels(OpenAIBackend("smollm2", base_url=llama_server))
    convs = [[Message(role="user", content=f"Which is larger? A) {a} or B) {b}. Reply \"A\" or \"B\".")]
             for a, b in ((3, 7), (10, 2), (40, 4))]
    remote = label_probs(judge, convs, ["A", "B"])
    local = label_probs(get_backend("embedded"), convs, ["A", "B"])
    for r, loc in zip(remote, local, strict=True):
        assert r["A"] + r["B"] == pytest.approx(1.0)
        assert abs(r["A"] - loc["A"]) < 0.25, (r, loc)


def test_draft_constitution_through_the_server(backend, tmp_path):
    from character.constitution import draft_constitution, save, load
    try:
        c = draft_constitution("a grumpy lighthouse keeper who loves astronomy", backend, n_traits=3, n_questions=3)
    except GenerationError as e:  # a 135M model may not manage; then the message must say which step
        assert "no valid" in str(e) and "Draft" in str(e)
        return
    path = save(c, tmp_path / "keeper.yaml")
    assert load(path) == c and len(c.traits) >= 3
