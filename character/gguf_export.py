"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio), plus an Ollama Modelfile.

    character export RUN --format gguf [--quant f32|f16|q8_0]   -> runs/<run>/export/<run>-<quant>.gguf, Modelfile

Written with the `gguf` package (gguf-py, maintained in the llama.cpp repository): its writer, its
HF-to-GGUF tensor name map and its SpecialVocab (merges, special token ids, chat template). Llama-
architecture models only (SmolLM2, Llama, Mistral-style dense models); q/k projections are permuted
from Hugging Face's rotate-half layout to llama.cpp's, as llama.cpp's own converter does. The
tokenizer's pre-tokenizer name is taken from a reference GGUF of the same vocabulary when one is at
hand (the embedded model's), else "default". Q4_K_M needs llama.cpp's `llama-quantize` on the f16 file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import CharacterError
from .inference.embedded import gguf_path

QUANTS = ("f32", "f16", "q8_0")
LLAMA_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> llama.cpp's interleaved rotary layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reference_pre(tokens: list[str]) -> str:
    """The pre-tokenizer name of a GGUF with the same vocabulary (the embedded model's), or default."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(gguf_path()))
    except Exception:  # noqa: BLE001 - no reference at hand
        return "default"
    field = reader.fields.get("tokenizer.ggml.tokens")
    ref = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data] if field else []
    if ref != tokens:
        return "default"
    pre = reader.fields["tokenizer.ggml.pre"]
    return bytes(pre.parts[pre.data[0]]).decode()


def modelfile(gguf_name: str, chat_template: str | None) -> str:
    """An Ollama Modelfile; ChatML models (SmolLM2, Qwen) get the template spelled for Ollama."""
    lines = ["# ollama create my-character -f Modelfile && ollama run my-character", f"FROM ./{gguf_name}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
                  "{{ .Content }}<|im_end|>", '{{ end }}<|im_start|>assistant', '"""',
                  'PARAMETER stop "<|im_end|>"']
    return "\n".join(lines) + "\n"


def export_gguf(model_dir: Path, out: Path, quant: str = "f16") -> Path:
    """Write `model_dir` (a transformers model folder) as GGUF at `out` (atomically) and a Modelfile beside it."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise CharacterError(f"quant={quant!r}: use one of {', '.join(QUANTS)} (for q4_k_m run llama.cpp's "
                             "llama-quantize on the f16 file)")
    config = json.loads((model_dir / "config.json").read_text())
    if not set(config.get("architectures") or []) & set(LLAMA_ARCHS):
        raise CharacterError(f"model={str(model_dir)!r}: architecture {config.get('architectures')} is not supported "
                             "by the GGUF export (Llama-style models only)")
    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    hidden = config["hidden_size"]
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    n_vocab = max(config["vocab_size"], max(vocab.values()) + 1)
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    types = [gguf.TokenType.CONTROL if i in special else
             gguf.TokenType.USER_DEFINED if i not in by_id else gguf.TokenType.NORMAL for i in range(n_vocab)]

    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        w.add_name(model_dir.parent.parent.name if model_dir.name == "model" else model_dir.name)
        w.add_context_length(config.get("max_position_embeddings", 2048))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_rope_dimension_count(config.get("head_dim", hidden // n_head))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
        rope = config.get("rope_parameters") or {}  # transformers >= 5 nests it; older configs keep it flat
        if rope.get("rope_type", "default") != "default":
            raise CharacterError(f"model={str(model_dir)!r}: rope scaling {rope.get('rope_type')!r} is not supported "
                                 "by the GGUF export")
        w.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
        w.add_vocab_size(n_vocab)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_reference_pre(tokens))
        w.add_token_list(tokens)
        w.add_token_types(types)
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab).add_to_gguf(w)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
        for name, data in tensors.items():
            if name.endswith("rotary_emb.inv_freq"):
                continue
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise CharacterError(f"tensor {name!r}: no GGUF name for it; this model is not a plain Llama model")
            data = data.astype(np.float32)
            if name.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif name.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            if data.ndim == 1 or quant == "f32":  # norms stay f32
                w.add_tensor(new, data)
            elif quant == "q8_0" and data.shape[-1] % 32 == 0:
                w.add_tensor(new, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(new, data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    (out.parent / "Modelfile").write_text(modelfile(out.name, getattr(tok, "chat_template", None)))
    return out
