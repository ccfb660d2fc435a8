"""A stand-in for the `vllm` package at the import boundary, for tests on machines without a GPU.

Its classes accept only the parameter names of vLLM's current API (>= 0.12: `structured_outputs`,
no `guided_decoding`; checked against vLLM's documentation and `vllm/sampling_params.py`), so a
call in the old form fails with TypeError. `LLM.generate` with prompt log-probs runs a real
transformers forward pass of the model, so log-probs read through it are real numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sampling_params import SamplingParams  # noqa: F401

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    prompt_logprobs: list | None = None
    prompt_token_ids: list[int] = field(default_factory=list)


class LLM:
    instances: list["LLM"] = []

    def __init__(self, *, model: str, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, enable_lora: bool = False,
                 max_lora_rank: int = 16, max_loras: int = 1, dtype: str = "auto", seed: int = 0):
        if max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS}")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.kwargs = {"model": model, "max_lora_rank": max_lora_rank, "enable_lora": enable_lora,
                       "max_model_len": max_model_len}
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model)
        self.calls: list[tuple[str, object, object]] = []
        LLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def chat(self, messages, sampling_params=None, *, lora_request=None, use_tqdm=True, chat_template=None,
             add_generation_prompt=True, continue_final_message=False, tools=None):
        self.calls.append(("chat", sampling_params, lora_request))
        return [RequestOutput(outputs=[CompletionOutput(text="{}", token_ids=[0])]) for _ in messages]

    def generate(self, prompts, sampling_params=None, *, lora_request=None, use_tqdm=True):
        import torch
        self.calls.append(("generate", sampling_params, lora_request))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            prompt_lp = None
            if sampling_params is not None and sampling_params.prompt_logprobs is not None:
                with torch.inference_mode():
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
                logp = torch.log_softmax(logits[:-1], dim=-1)
                prompt_lp = [None] + [{ids[i]: Logprob(float(logp[i - 1, ids[i]]))} for i in range(1, len(ids))]
            outs.append(RequestOutput(outputs=[CompletionOutput(text="", token_ids=[0])], prompt_logprobs=prompt_lp,
                                      prompt_token_ids=ids))
        return outs
