"""The vLLM backend's calls, checked against a stand-in `vllm` package (tests/standins/vllm) whose
classes take only the current API's parameter names (vLLM >= 0.12). Its prompt log-probs come from
a real forward pass of the embedded model, so the backend's log-probs must equal transformers'.
The real-GPU test is tests/test_gpu.py::test_vllm_generates_with_a_lora_adapter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from character.types import Message, SamplingParams

STANDINS = Path(__file__).resolve().parent / "standins"


@pytest.fixture
def vllm_standin(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    from character.inference import vllm as backend_module
    monkeypatch.setattr(backend_module, "_ENGINES", {})
    import vllm
    assert Path(vllm.__file__).is_relative_to(STANDINS)
    yield vllm
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_vllm_backend_speaks_the_current_api_and_scores_like_transformers(vllm_standin, embedded, tmp_path):
    from character.inference.embedded import embedded_model_path
    from character.inference.vllm import VLLMBackend
    model = str(embedded_model_path())
    (tmp_path / "adapter").mkdir()
    b = VLLMBackend(model, adapter=str(tmp_path / "adapter"), max_lora_rank=32)
    llm = vllm_standin.LLM.instances[-1]
    assert llm.kwargs["max_lora_rank"] == 32 and llm.kwargs["enable_lora"]
    assert VLLMBackend(model, max_lora_rank=64).llm is not llm  # the engine cache key holds the LoRA rank
    assert VLLMBackend(model, max_lora_rank=32).llm is llm
    schema = {"title": "T", "type": "object", "properties": {"ok": {"type": "boolean"}}}
    b.generate([[Message(role="user", content="hi")]], SamplingParams(repetition_penalty=1.3), json_schema=schema)
    _, params, lora = llm.calls[-1]
    assert params.structured_outputs.json == schema and params.repetition_penalty == 1.3
    assert lora.lora_path == str(tmp_path / "adapter") and lora.lora_int_id == 1
    convs = [[Message(role="user", content="How do I boil an egg?")],
             [Message(role="system", content="You are a pirate."), Message(role="user", content="Hello!")]]
    answers = ["Put it in boiling water for nine minutes.", "Ahoy, matey! Welcome aboard."]
    plain = VLLMBackend(model, max_lora_rank=32)  # same engine, no adapter
    got, want = plain.logprobs(convs, answers), embedded.logprobs(convs, answers)
    assert [len(x) for x in got] == [len(x) for x in want]
    assert all(abs(a - b) < 1e-3 for g, w in zip(got, want) for a, b in zip(g, w))
    assert llm.calls[-1][1].prompt_logprobs == 0 and llm.calls[-1][1].max_tokens == 1


def test_the_standin_refuses_the_removed_api(vllm_standin):
    from vllm import SamplingParams as VParams
    with pytest.raises(TypeError):
        VParams(guided_decoding=object())
    with pytest.raises(ImportError):
        from vllm.sampling_params import GuidedDecodingParams  # noqa: F401
