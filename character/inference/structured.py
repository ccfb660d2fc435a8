"""Structured output: ask for JSON matching a pydantic model, validate, re-ask with the error.

Backends that can guide decoding by a schema get the schema: OpenAI-compatible servers and vLLM
guide it themselves, and local transformers models (embedded, hf/) decode under llguidance, so
each answer is JSON valid for the schema (or cut off at max_tokens). Backends that cannot get it in
the prompt and, where the caller gives one, an assistant prefill that opens the JSON. Invalid answers are re-asked with the validation error a bounded
number of times; what still fails comes back as a `StructuredFailure` (batch) or raises
`GenerationError` (single), never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import GenerationError
from ..types import Conversation, Message, SamplingParams
from . import Backend

T = TypeVar("T", bound=BaseModel)


@dataclass
class StructuredFailure:
    error: str
    raw: str
    attempts: int


def extract_json(text: str) -> object:
    """The first complete JSON object or array in `text` (code fences and prose around it ignored)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object found in the answer")


def schema_instruction(schema: type[BaseModel], example: bool = True) -> str:
    """A short instruction: an example object where the schema has one, then each field's meaning.
    (Small models copy a raw JSON schema back instead of filling it; an example works better. Under
    constrained decoding the form is enforced, and a small model would only copy the example's words.)"""
    js = schema.model_json_schema()
    lines = ["Reply with only a JSON object (no prose, no code fence)."]
    examples = js.get("examples")
    if examples and example:
        lines.append("Form: " + json.dumps(examples[0], ensure_ascii=False))
    for name, prop in js.get("properties", {}).items():
        kind = prop.get("type", "value")
        if kind == "array":
            kind = f"list of {prop.get('items', {}).get('type', 'value')}s"
        lines.append(f"- {name} ({kind}): {prop.get('description', '')}".rstrip(": "))
    return "\n".join(lines)


def local_schema(schema: type[BaseModel]) -> dict:
    """The JSON schema a local constrained decoder enforces: the model's schema plus the string patterns it
    names in a `patterns` class variable (field -> regex; for a list field, each item), so the decoder also
    keeps the form the validators check (a trait is 'I' and three more words). A JSON-schema pattern matches
    anywhere in the string unless anchored, so each is anchored at both ends. Servers get the plain schema:
    llama.cpp, for one, falls back to unguided JSON on a `pattern`."""
    js = schema.model_json_schema()
    for name, regex in getattr(schema, "patterns", {}).items():
        prop = js["properties"][name]
        (prop["items"] if prop.get("type") == "array" else prop)["pattern"] = f"^(?:{regex})$"
    return js


def parse_as(schema: type[T], text: str) -> T:
    data = extract_json(text)
    return schema.model_validate(data)


def _error_text(e: Exception) -> str:
    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in e.errors()[:5]]
        return "; ".join(parts)
    return str(e)


def generate_structured_batch(backend: Backend, conversations: list[Conversation], schema: type[T],
                              params: SamplingParams | None = None, retries: int = 2,
                              prefill: str | None = None,
                              json_schema: dict | None = None) -> list[T | StructuredFailure]:
    """One validated `schema` instance (or a StructuredFailure) per conversation, in order. `json_schema`, where
    given, is what a schema-guided backend enforces instead of `schema`'s own (a narrower form of it, e.g. a
    string field limited to an enum built from the data); answers are still validated against `schema`."""
    params = (params or SamplingParams(max_tokens=512, temperature=0.7)).model_copy(update={"n": 1})
    # a constrained decoder starts the JSON itself (a prefill would leave it mid-object)
    constrained = getattr(backend, "supports_json_schema", False)
    use_prefill = prefill if (prefill and backend.supports_prefill and not constrained) else ""
    convs = []
    for conv in conversations:
        conv = list(conv)
        conv[-1] = Message(role=conv[-1].role,
                           content=conv[-1].content + "\n\n" + schema_instruction(schema, example=not constrained))
        convs.append(conv)
    results: list[T | StructuredFailure | None] = [None] * len(convs)
    pending = list(range(len(convs)))
    last_raw: dict[int, str] = {}
    last_err: dict[int, str] = {}
    if json_schema is None:
        json_schema = local_schema(schema) if constrained else schema.model_json_schema()
    for attempt in range(retries + 1):
        if not pending:
            break
        batch = [convs[i] + ([Message(role="assistant", content=use_prefill)] if use_prefill else [])
                 for i in pending]
        # a re-ask draws afresh (the same seed tends to walk back into the same bad answer)
        tries = params if params.seed is None else params.model_copy(update={"seed": params.seed + 1000 * attempt})
        outs = backend.generate(batch, tries, json_schema=json_schema)
        still = []
        for i, out in zip(pending, outs):
            raw = use_prefill + out[0].text
            if out[0].finish_reason == "error":  # the request itself failed after its retries
                last_raw[i], last_err[i] = "", out[0].error or "request failed"
                still.append(i)
                continue
            try:
                results[i] = parse_as(schema, raw)
            except (ValueError, ValidationError) as e:
                last_raw[i], last_err[i] = raw, _error_text(e)
                convs[i] = convs[i] + [
                    Message(role="assistant", content=raw[:2000]),
                    Message(role="user", content=f"That answer was not valid: {last_err[i]}. "
                                                 "Reply again with only the corrected JSON object."),
                ]
                still.append(i)
        pending = still
    for i in pending:
        results[i] = StructuredFailure(error=last_err[i], raw=last_raw[i], attempts=retries + 1)
    return results  # type: ignore[return-value]


def generate_structured(backend: Backend, conversation: Conversation, schema: type[T],
                        params: SamplingParams | None = None, retries: int = 2,
                        prefill: str | None = None) -> T:
    result = generate_structured_batch(backend, [conversation], schema, params, retries, prefill)[0]
    if isinstance(result, StructuredFailure):
        raise GenerationError(f"model={backend.name!r}: no valid {schema.__name__} after {result.attempts} "
                              f"tries (last error: {result.error[:200]})")
    return result
