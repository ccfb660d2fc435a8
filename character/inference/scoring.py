"""Where a response starts and ends in tokens: shared by every backend that scores given responses
(transformers, vLLM), so they agree at the prompt/response boundary."""

from __future__ import annotations

from ..types import Conversation
from . import as_messages


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
