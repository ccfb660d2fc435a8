"""Persona score: a judge-free measure of how much the persona explains an answer.

    score(answer | prompt) = mean log p_ref(answer tokens | constitution as system prompt, prompt)
                           - mean log p_ref(answer tokens | prompt)

in nats per token, under a reference model (the recipe's base model). Above zero, the constitution
makes the answer likelier than the bare request does: the answer reads as the persona's. It needs
no judge and no labels, only token log-probabilities, so it is computed in batches wherever the
reference model is local (transformers, vLLM). The system prompt is always the full rendered
constitution (`constitution.render_system_prompt`), whatever form the teacher was prompted with,
so scores of different teacher settings are comparable.
"""

from __future__ import annotations

import functools

from .constitution import render_system_prompt
from .types import Message


def persona_scores(reference, system: str, prompts: list[str], answers: list[str]) -> list[float]:
    """One score per (prompt, answer): mean token log-prob with `system` minus without it."""
    if not answers:
        return []
    with_sys = [[Message(role="system", content=system), Message(role="user", content=p)] for p in prompts]
    bare = [[Message(role="user", content=p)] for p in prompts]
    # a local model reads both sides under its bf16 autocast where it has one (about 3x float32 on CPUs
    # with bf16 instructions); the two readings share most of their rounding
    fast = {"fast": True} if getattr(reference, "autocast", False) else {}
    lp = reference.logprobs(with_sys + bare, list(answers) * 2, **fast)
    n = len(answers)
    return [sum(a) / max(1, len(a)) - sum(b) / max(1, len(b)) for a, b in zip(lp[:n], lp[n:], strict=True)]


LOCAL_PROVIDERS = ("embedded", "hf", "vllm")


def scored_by_default(spec: str) -> bool:
    """Whether persona scores are read without being asked for: under local models, where they cost a batched
    pass; a remote scorer (Tinker) is used only when an option needs the scores (best_of, persona_filter)."""
    return spec.split("/", 1)[0] in LOCAL_PROVIDERS


def scorer_for(reference, spec: str, constitution, needed: bool):
    """`(prompts, answers) -> persona scores` under `reference` (the recipe's student, i.e. the base model)
    with the full rendered constitution, or None where scores are neither needed (best_of, persona_filter)
    nor free (`scored_by_default`). Raises ValueError when they are needed and `reference` reads no
    log-probabilities."""
    if reference.supports_logprobs and (needed or scored_by_default(spec)):
        return functools.partial(persona_scores, reference, render_system_prompt(constitution))
    if needed:
        raise ValueError(f"best_of and persona_filter rank answers by persona score, which reads log-probabilities; "
                         f"student {spec!r} gives none. Use a local student (embedded, hf/..., vllm/...) or set "
                         "best_of: 1, persona_filter: false")
    return None


def best_of(scores: list[float]) -> int:
    """Index of the highest score (the first one on ties)."""
    return max(range(len(scores)), key=scores.__getitem__)
