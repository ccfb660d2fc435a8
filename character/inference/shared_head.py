"""Attention over a prompt head that every row of a batch shares, kept once instead of once per row.

The distillation teacher's 64 prompts all open with the constitution and its voice examples (652 tokens
for the pirate); the prompted evaluation methods and the judges open with the same character text. The hf
backend computes such a head's key/value cache once (`HFBackend._head_cache`). Copying it to each of 64
rows made every decoding step read and rewrite 64 copies (1.9 GB in float32 for the embedded model's 30
layers), so on a 2-core CPU the teacher's answers decoded at about a fifth of the plain prompts' speed.

Here the head stays a single copy ([1, kv heads, head length, head dim]) in `SharedHeadLayer`, next to
each row's own keys and values. The `shared_head` attention (registered with transformers' attention
interface, and the sdpa mask) scores every row's queries against the head in one matrix product (the
batch folded into its rows), scores them against the row's own keys under the mask, and takes one
softmax over both. Grouped-query heads are grouped under their key/value head, never repeated. Without
an active shared head (any other cache, training, the negatives of guided decoding) it is transformers'
sdpa attention unchanged. tests/test_inference_hf.py checks greedy answers and log-probs against the
per-row copies; benchmarks/RESULTS.md has the speed.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "shared_head"
_current = threading.local()  # the head of the layer whose attention runs next (set by its cache update)


class SharedHeadLayer(DynamicLayer):
    """One layer's cache: the shared head once, each row's own keys and values after it."""

    is_croppable = False  # cropping could not remove head tokens (assisted decoding is not used here)

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.head_keys, self.head_values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        # read by shared_head_attention, next in this layer; tied to the keys it is called with
        _current.head = (self.head_keys, self.head_values, self.keys)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        own = self.keys.shape[-2] if self.is_initialized and self.keys.numel() else 0
        return self.head_keys.shape[-2] + own


def shared_cache(head_cache) -> DynamicCache | None:
    """A cache for a batch of any width that starts after `head_cache` (computed for one row), or None
    where the head's layers are not plain full-attention layers (sliding windows keep the per-row copy)."""
    if not all(type(layer) is DynamicLayer for layer in head_cache.layers):
        return None
    cache = DynamicCache()
    cache.layers = [SharedHeadLayer(layer.keys, layer.values) for layer in head_cache.layers]
    return cache


def shared_head_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    head = getattr(_current, "head", None)
    _current.head = None
    if head is None or head[2] is not key:  # no shared head in this forward (or a stale one): plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    head_k, head_v, _ = head
    b, h, q, d = query.shape
    kv_heads, n_head = head_k.shape[1], head_k.shape[2]
    g = h // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    grouped = query.reshape(b, kv_heads, g * q, d)  # query heads under their key/value head
    folded = grouped.transpose(0, 1).reshape(kv_heads, b * g * q, d)  # every row against the one head
    s_head = torch.matmul(folded, head_k[0].transpose(-1, -2)).mul_(scale)
    s_head = s_head.view(kv_heads, b, g * q, n_head).transpose(0, 1)
    s_own = torch.matmul(grouped, key.transpose(-1, -2)).mul_(scale)
    own = key.shape[2]
    if attention_mask is None and q > 1:  # causal among the rows' own tokens; the head is seen whole
        attention_mask = torch.ones(q, n_head + own, dtype=torch.bool, device=query.device).tril(n_head + own - q)
        attention_mask = attention_mask[None, None]
    if attention_mask is not None:
        m = attention_mask[..., n_head:]
        m = m.unsqueeze(2).expand(m.shape[0], 1, g, q, own).reshape(m.shape[0], 1, g * q, own)
        s_own = s_own.masked_fill(~m, torch.finfo(s_own.dtype).min) if m.dtype == torch.bool else s_own + m
    p = torch.softmax(torch.cat([s_head, s_own], dim=-1).float(), dim=-1).to(value.dtype)
    p_head = p[..., :n_head].transpose(0, 1).reshape(kv_heads, b * g * q, n_head)
    out = torch.matmul(p_head, head_v[0]).view(kv_heads, b, g * q, d).transpose(0, 1)
    out = out + torch.matmul(p[..., n_head:], value)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, shared_head_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model) -> bool:
    """Switch a CPU model that uses sdpa attention, without sliding windows or logit soft-capping, to
    `shared_head` (identical without a shared head). On a GPU the per-row copies stay: sdpa's fused kernels
    never build the score matrix this function does, and the speed was measured on CPUs only."""
    cfg = model.config
    if (model.device.type != "cpu" or getattr(cfg, "_attn_implementation", None) != "sdpa"
            or getattr(cfg, "sliding_window", None) or getattr(cfg, "attn_logit_softcapping", None)):
        return False
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
