"""Tinker sampling backend (remote). Spec `tinker/<base-model>` or `tinker/tinker://<run>/...`.

Extra `tinker`; needs TINKER_API_KEY. The chat template is applied with the model's own
tokenizer (`get_tokenizer()`), the same way as the local hf path, so both see the same tokens.
"""

from __future__ import annotations

from typing import Iterator

from ..errors import GenerationError, MissingDependencyError, MissingKeyError
from ..settings import env
from ..types import Completion, Conversation, SamplingParams
from . import as_messages
from .scoring import response_token_ids


class TinkerBackend:
    supports_logprobs = True
    supports_prefill = True

    def __init__(self, model: str, api_key: str | None = None, service_client=None):
        try:
            import tinker
        except ImportError:
            raise MissingDependencyError("backend 'tinker' needs the Tinker SDK; run: pip install -e '.[tinker]'") from None
        self._types = tinker.types
        key = api_key or env("TINKER_API_KEY")
        if service_client is None and not key:
            raise MissingKeyError(f"model='tinker/{model}': TINKER_API_KEY is not set; put it in the environment or .env")
        self.name = f"tinker/{model}"
        sc = service_client or tinker.ServiceClient(api_key=key)
        if model.startswith("tinker://"):
            self.client = sc.create_sampling_client(model_path=model).result()
        else:
            self.client = sc.create_sampling_client(base_model=model).result()
        self.tokenizer = self.client.get_tokenizer()

    def _prompt_tokens(self, conversation: Conversation) -> list[int]:
        msgs = as_messages(conversation)
        prefill = bool(msgs) and msgs[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not prefill,
                                                  continue_final_message=prefill)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None, progress: bool = False) -> list[list[Completion]]:
        t = self._types
        sp = t.SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                              seed=params.seed, stop=params.stop or None)
        futures = [self.client.sample(prompt=t.ModelInput.from_ints(self._prompt_tokens(c)),
                                      num_samples=params.n, sampling_params=sp) for c in conversations]
        out = []
        for fut in futures:
            try:
                resp = fut.result()
            except Exception as e:  # the SDK retries internally; what reaches us is final
                raise GenerationError(f"model={self.name!r}: sampling failed ({e})") from None
            out.append([Completion(text=self.tokenizer.decode(s.tokens, skip_special_tokens=True).strip(),
                                   finish_reason="length" if s.stop_reason == "length" else "stop",
                                   model=self.name, completion_tokens=len(s.tokens)) for s in resp.sequences])
        return out

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        yield self.generate([conversation], params.model_copy(update={"n": 1}))[0][0].text

    def logprobs(self, conversations: list[Conversation], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of each response, its end-of-turn token included (scoring.response_token_ids,
        as every backend). Only the response's tokens are asked for, so the server can reuse a cached head."""
        t = self._types
        futures = []
        for conv, resp in zip(conversations, responses, strict=True):
            ids, n_prompt = response_token_ids(self.tokenizer, conv, resp)
            n = len(ids) - n_prompt
            futures.append((self.client.compute_logprobs(t.ModelInput.from_ints(ids), prompt_logprobs_last_n=n)
                            if n else None, n))
        # one entry per prompt token (None where not computed); the response's are the last n
        return [[float(x) for x in fut.result()[-n:]] if n else [] for fut, n in futures]
