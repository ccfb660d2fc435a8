"""Stand-in for vllm.lora.request."""

from __future__ import annotations


class LoRARequest:
    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str = "", base_model_name=None,
                 tensorizer_config_dict=None):
        assert lora_int_id >= 1 and lora_path, "lora_int_id >= 1 and a non-empty lora_path"
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path
