"""In-process vLLM backend (GPU): batched generation with optional LoRA adapters, JSON-schema
structured output, and log-probs of given responses (prompt log-probs).

Targets vLLM >= 0.12 (the `structured_outputs` API; `GuidedDecodingParams` was removed in 0.12).
Spec `vllm/<hub-id-or-path>`; extra `gpu`. Options (recipe `models.options`): `adapter` (a PEFT
LoRA folder), `tensor_parallel_size`, `data_parallel_size`, `max_model_len`,
`gpu_memory_utilization`, `max_lora_rank`. One engine is loaded per base model and shared by every
backend on it; adapters are served per request with `LoRARequest`, so teacher, student and the
DPO-trained model are sampled from one loaded base without merging. For a server instead, run
`vllm serve MODEL --enable-lora` and use `openai/MODEL` with OPENAI_BASE_URL pointing at it.
"""

from __future__ import annotations

from typing import Iterator

from ..errors import GenerationError, MissingDependencyError
from ..types import Completion, Conversation, SamplingParams
from . import as_messages
from .scoring import response_token_ids

_ENGINES: dict[tuple, object] = {}
_ADAPTER_IDS: dict[int, dict[str, int]] = {}


class VLLMBackend:
    supports_logprobs = True
    supports_prefill = True

    def __init__(self, model: str, adapter: str | None = None, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, max_model_len: int = 4096, gpu_memory_utilization: float = 0.9,
                 max_lora_rank: int = 64):
        try:
            from vllm import LLM
        except ImportError:
            raise MissingDependencyError("backend 'vllm' needs vLLM and a GPU; run: pip install -e '.[gpu]'") from None
        self.name = f"vllm/{model}" + (f"+{adapter}" if adapter else "")
        self.adapter = adapter
        key = (model, tensor_parallel_size, data_parallel_size, max_model_len, max_lora_rank, gpu_memory_utilization)
        if key not in _ENGINES:  # LoRA is always enabled so any adapter can be served later
            _ENGINES[key] = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                                data_parallel_size=data_parallel_size, max_model_len=max_model_len,
                                gpu_memory_utilization=gpu_memory_utilization, enable_lora=True,
                                max_lora_rank=max_lora_rank)
        self.llm = _ENGINES[key]

    def _params(self, params: SamplingParams, json_schema: dict | None):
        from vllm import SamplingParams as VParams
        kw = dict(n=params.n, max_tokens=params.max_tokens, temperature=params.temperature,
                  top_p=params.top_p, stop=params.stop or None, seed=params.seed,
                  repetition_penalty=params.repetition_penalty)
        if json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams
            kw["structured_outputs"] = StructuredOutputsParams(json=json_schema)
        return VParams(**kw)

    def _lora(self):
        if not self.adapter:
            return None
        from vllm.lora.request import LoRARequest
        ids = _ADAPTER_IDS.setdefault(id(self.llm), {})
        ids.setdefault(self.adapter, len(ids) + 1)
        return LoRARequest(f"adapter-{ids[self.adapter]}", ids[self.adapter], self.adapter)

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None, progress: bool = False) -> list[list[Completion]]:
        msgs = [as_messages(c) for c in conversations]
        prefill = [bool(m) and m[-1]["role"] == "assistant" for m in msgs]
        if any(prefill) and not all(prefill):
            raise GenerationError("vllm: mix of prefilled and plain conversations in one batch; split them")
        outs = self.llm.chat(msgs, self._params(params, json_schema), lora_request=self._lora(),
                             use_tqdm=progress, add_generation_prompt=not any(prefill),
                             continue_final_message=any(prefill))
        return [[Completion(text=o.text.strip(), finish_reason="length" if o.finish_reason == "length" else "stop",
                            model=self.name, completion_tokens=len(o.token_ids)) for o in out.outputs]
                for out in outs]

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        yield self.generate([conversation], params.model_copy(update={"n": 1}))[0][0].text

    def logprobs(self, conversations: list[Conversation], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of each response given its conversation: one prefill per row with
        prompt log-probs (the response's own token is always returned), tokenised as hf.py does."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt
        tok = self.llm.get_tokenizer()
        rows = [response_token_ids(tok, c, r) for c, r in zip(conversations, responses, strict=True)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in rows],
                                 VParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                                 lora_request=self._lora(), use_tqdm=False)
        return [[out.prompt_logprobs[i][ids[i]].logprob for i in range(n, len(ids))]
                for (ids, n), out in zip(rows, outs, strict=True)]
