"""Scoring given responses, one way everywhere.

- `response_token_ids`: where a response starts and ends in tokens. Every backend that scores responses
  (transformers, vLLM, Tinker) uses it, so they agree at the prompt/response boundary.
- `tokenize_for_sft`: a whole conversation's ids with a mask on every assistant turn: what both SFT
  trainers (TRL and Tinker) train on.
- `heldout_preference_metrics`: DPO's held-out check (reward accuracy and margin, the chosen answers'
  log-prob per token before and after) from any two scorers' per-token log-probs: the local trainer passes
  its model with the adapter on and off (`HFBackend.from_model`), Tinker its two samplers.
"""

from __future__ import annotations

from typing import Callable

from ..types import Conversation, Message, PreferencePair
from . import as_messages

Scorer = Callable[[list[Conversation], list[str]], list[list[float]]]  # a backend's `logprobs`


def response_token_ids(tokenizer, conversation: Conversation, response: str) -> tuple[list[int], int]:
    """(token ids of the conversation with the response as the next assistant turn, number of ids
    before the response). The response is scored up to and including its end-of-turn token, with the
    chat template applied as in training."""
    msgs = as_messages(conversation)
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):  # templates that rewrite history; score the text
        full = prompt + response
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    f_ids = tokenizer(full, add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    if eos in f_ids[len(p_ids):]:  # score up to end-of-turn, not the template's trailing newline
        f_ids = f_ids[:f_ids.index(eos, len(p_ids)) + 1]
    return f_ids, len(p_ids)


def tokenize_for_sft(tokenizer, messages: list[dict], max_length: int) -> dict:
    """input_ids and an assistant mask (1 on every assistant turn's text and end token)."""
    ids: list[int] = []
    mask: list[int] = []
    prev = ""
    for i, m in enumerate(messages):
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if m["role"] == "assistant" and i > 0:
            head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            segments = [(head[len(prev):], 0), (full[len(head):], 1)]
            ok = head.startswith(prev) and full.startswith(head)
        else:
            segments = [(full[len(prev):], 0)]
            ok = full.startswith(prev)
        if not ok:
            raise ValueError("this chat template rewrites earlier turns; cannot mask assistant tokens exactly")
        for text, flag in segments:
            piece = tokenizer(text, add_special_tokens=False).input_ids
            ids += piece
            mask += [flag] * len(piece)
        prev = full
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def heldout_preference_metrics(policy: Scorer, reference: Scorer, pairs: list[PreferencePair], beta: float) -> dict:
    """Held-out DPO reward accuracy and margin, and the mean per-token log-prob of the chosen answers with
    no system prompt under the reference and the policy (the character likelihood gain)."""
    if not pairs:
        return {}
    convs = [[Message(role="user", content=p.prompt)] for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    pol_c, pol_r = policy(convs, chosen), policy(convs, rejected)
    ref_c, ref_r = reference(convs, chosen), reference(convs, rejected)
    margins = [beta * ((sum(pc) - sum(rc)) - (sum(pr) - sum(rr))) for pc, pr, rc, rr in zip(pol_c, pol_r, ref_c, ref_r)]
    tokens = sum(len(x) for x in pol_c)
    return {"heldout_pairs": len(pairs), "reward_accuracy": sum(m > 0 for m in margins) / len(pairs),
            "reward_margin": sum(margins) / len(margins),
            "chosen_logp_per_token_base": sum(map(sum, ref_c)) / tokens,
            "chosen_logp_per_token_trained": sum(map(sum, pol_c)) / tokens}
