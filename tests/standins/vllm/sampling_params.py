"""Stand-in for vllm.sampling_params (current API names only)."""

from __future__ import annotations


class StructuredOutputsParams:
    def __init__(self, *, json=None, regex=None, choice=None, grammar=None, json_object=None,
                 disable_any_whitespace=False, disable_additional_properties=False, whitespace_pattern=None,
                 structural_tag=None):
        set_ = [x for x in (json, regex, choice, grammar, json_object, structural_tag) if x is not None]
        if len(set_) != 1:
            raise ValueError("exactly one structured-output constraint must be set")
        self.json = json


class SamplingParams:
    def __init__(self, *, n: int = 1, max_tokens: int | None = 16, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, stop=None, seed: int | None = None, repetition_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0, structured_outputs=None,
                 prompt_logprobs: int | None = None, logprobs: int | None = None):
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})
