"""Local transformers backend: batched generation (left padding, length buckets), streaming,
token log-probabilities of given responses, optional PEFT adapters.

Spec: `hf/<hub-id-or-path>` or `embedded`. Device: CUDA, then Apple MPS, then CPU; dtype bf16 on
GPUs that support it, float32 otherwise.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import os
import re
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MissingDependencyError, ModelSpecError
from ..types import Completion, Conversation, SamplingParams
from . import as_messages
from .scoring import response_token_ids

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, TextIteratorStreamer
except ImportError as e:  # pragma: no cover - depends on installed extras
    raise MissingDependencyError(f"backend 'hf' needs {e.name}; run: pip install -e '.[train]'") from None
from tqdm import tqdm

from . import shared_head  # noqa: E402  (imports transformers: after the check above)


def pick_device() -> str:
    if torch.cuda.is_available():  # under `accelerate launch`, each process takes its own GPU
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str):
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(path_or_id: str, device: str | None = None, dtype=None, load_in_4bit: bool = False):
    """Load tokenizer + causal LM, with a one-line error for unknown models. `load_in_4bit`: QLoRA's
    NF4 quantisation with bf16 compute (bitsandbytes, CUDA only)."""
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise ModelSpecError("load_in_4bit: 4-bit (QLoRA) loading needs a CUDA GPU; set load_in_4bit: false")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelSpecError("load_in_4bit: needs bitsandbytes; run: pip install -e '.[gpu]'") from None
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16,
                                                           bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as e:
        where = "folder" if Path(path_or_id).exists() else "hub id or local folder"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelSpecError(f"model='hf/{path_or_id}': cannot load this {where} ({first}); "
                             "give a local model folder, a reachable hub id, or use 'embedded'") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not load_in_4bit:
        model = model.to(device)
    return tokenizer, model.eval()


@functools.cache
def cpu_has_bf16() -> bool:
    """bf16 matrix instructions on this CPU (x86 AVX512-BF16 or AMX, from /proc/cpuinfo). Where they are
    missing, bf16 arithmetic is emulated and slower than fp32."""
    try:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def default_batch_size(model) -> int:
    """Sequences decoded together. Decoding a small model is bound by per-step overhead, so wide
    batches pay: the embedded 135M model on 2 CPU cores makes 133 tokens/s at 16 and 247 at 64
    (benchmarks/RESULTS.md). Large models keep 16 (their KV cache grows with the batch)."""
    return 64 if sum(p.numel() for p in model.parameters()) < 1e9 else 16


TOKENS_PER_ROW = 128  # prompt-token budget of a batch, per row of the widest batch


def length_batches(order: list[int], lengths: list[int], rows: int, budget: int) -> list[list[int]]:
    """Cut length-sorted items into batches of at most `rows`, whose padded prompt (rows x longest)
    stays within `budget` tokens: long prompts go in narrower batches, so the prompt pass is not
    spent on padding (48 evaluation prompts of 33-473 tokens in one batch were half padding)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) == rows or (len(cur) + 1) * lengths[i] > budget):
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])


# transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning)
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


PREFIX_MIN_TOKENS = 64  # a shared prompt head at least this long is computed once and reused


def per_row(head_cache, rows: int):
    """A copy of a shared head's cache for each of `rows` rows (generation extends it in place)."""
    cache = copy.deepcopy(head_cache)
    cache.batch_repeat_interleave(rows)
    return cache


def by_system_prompt(conversations: list[Conversation]) -> list[list[int]]:
    """Indices of the conversations grouped by their system prompt (no system prompt is one group), in
    order of first appearance: the groups whose heads can share a cache."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(conversations):
        groups.setdefault(c[0].content if c and c[0].role == "system" else "", []).append(i)
    return list(groups.values())


def shared_prefix(seqs: list[list[int]]) -> int:
    """Tokens every sequence starts with (at least one token of each is left to prefill), or 0 when
    that head is too short to be worth caching."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n if n >= PREFIX_MIN_TOKENS else 0


class HFBackend:
    supports_logprobs = True
    supports_guidance = True  # generate(..., negatives=, guidance=)
    supports_prefill = True
    # generate(..., json_schema=) decodes only schema-valid JSON where llguidance is installed (the train extra);
    # without it, structured calls fall back to the schema in the prompt and a prefill
    supports_json_schema = importlib.util.find_spec("llguidance") is not None

    def __init__(self, model: str, name: str | None = None, adapters: list[str] | None = None,
                 device: str | None = None, batch_size: int | None = None, logprob_batch_size: int = 8,
                 precision: str = "auto"):
        if precision not in ("auto", "bf16", "fp32"):
            raise ModelSpecError(f"precision={precision!r}: use auto, bf16 or fp32")
        tokenizer, loaded = load_model(model, device)
        if adapters:
            loaded = self._with_adapters(loaded, list(adapters))
        self._attach(tokenizer, loaded, name or f"hf/{model}", model, batch_size, logprob_batch_size)
        self.adapters = list(adapters or [])
        # the head is kept once for a whole batch, not copied per row (shared_head.py; sdpa models)
        self.shared_head = shared_head.enable(self.model)
        # A float32 model on a CPU with bf16 matrix instructions generates and reads judge labels under bf16
        # autocast (1.5x the tokens/s of float32 at batch 64 on 2 cores; benchmarks/RESULTS.md). A judge's
        # label reads are checked on the same path by its calibration gate. Response log-probs (`logprobs`:
        # the likelihood and perplexity figures, DPO's held-out check) stay float32. On a GPU the model is
        # loaded in bf16 already.
        self.autocast = self.model.device.type == "cpu" and self.model.dtype == torch.float32 and (
            precision == "bf16" or (precision == "auto" and cpu_has_bf16()))

    @classmethod
    def from_model(cls, tokenizer, model, name: str) -> HFBackend:
        """A backend around a model loaded elsewhere (the trainer's model with its adapter), so training
        metrics read log-probs through the same `logprobs` as evaluation. The model is used as it is: its
        attention stays as loaded (no shared head), each call scores every row in full (no head cache, so a
        caller may switch an adapter off between calls), in the model's own precision."""
        backend = cls.__new__(cls)
        backend._attach(tokenizer, model, name, name, None, 8)
        backend.adapters, backend.shared_head, backend.autocast, backend.prefix_cache = [], False, False, False
        return backend

    def _attach(self, tokenizer, model, name: str, path: str, batch_size: int | None, logprob_batch_size: int):
        self.name, self.path = name, path
        self.tokenizer, self.model = tokenizer, model
        self.batch_size = batch_size or default_batch_size(model)
        self.logprob_batch_size = logprob_batch_size  # full-vocabulary logits per row: keep these batches small
        self.device = model.device
        self._lock = threading.Lock()  # one forward pass at a time per model
        self.prefix_cache = True  # reuse a shared prompt head's cache across a batch (see generate)

    @staticmethod
    def _with_adapters(model, adapters: list[str]):
        try:
            from peft import PeftModel
        except ImportError:
            raise MissingDependencyError("adapters need peft; run: pip install -e '.[train]'") from None
        for path in adapters:
            if not (Path(path) / "adapter_config.json").exists():
                raise ModelSpecError(f"adapters={path!r}: no adapter_config.json there; "
                                     "give a folder saved by PEFT (save_pretrained)")
        if len(adapters) == 1 and model.dtype != torch.float32:
            # a bf16/fp16 model keeps its adapter apart: folding a small LoRA change into 16-bit weights rounds it
            return PeftModel.from_pretrained(model, adapters[0]).eval()
        # Adapters are folded into float32 weights, one after another: each LoRA's delta B@A is independent
        # of the others, so this is exactly base + sum(delta_i) up to float32 rounding, and decoding pays no
        # extra LoRA products per layer and step.
        for path in adapters:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        return model.eval()

    # -- prompts -------------------------------------------------------------------------------
    def render(self, conversation: Conversation) -> str:
        """Chat-template text; a trailing assistant message is continued (prefill)."""
        messages = as_messages(conversation)
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill)

    def _encode(self, texts: list[str]):
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _gen_kwargs(self, params: SamplingParams) -> dict:
        kwargs = dict(max_new_tokens=params.max_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        return kwargs

    def _stop_ids(self) -> set[int]:
        """Tokens that end generation: the tokenizer's end token and the generation config's (a list in
        some chat models, e.g. an end-of-turn token)."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
        return {i for i in ids if i is not None}

    def _finish(self, token_ids: list[int], params: SamplingParams) -> Completion:
        eos = self._stop_ids() | {self.tokenizer.pad_token_id}
        ended = False
        while token_ids and token_ids[-1] in eos:
            token_ids = token_ids[:-1]
            ended = True
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        for s in params.stop:
            if s in text:
                text, ended = text[: text.index(s)], True
        reason = "stop" if ended or len(token_ids) < params.max_tokens else "length"
        return Completion(text=text.strip(), finish_reason=reason, model=self.name,
                          completion_tokens=len(token_ids))

    # -- protocol ------------------------------------------------------------------------------
    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None, progress: bool = False,
                 negatives: list[Conversation] | None = None, guidance: float = 1.0) -> list[list[Completion]]:
        """Batched sampling. Conversations that share a long head (the same system prompt) are
        grouped, and the head's key/value cache is computed once per group and reused by every
        batch in it (`shared_prefix`); within a group, prompts are sorted by token length and cut
        into batches of similar length, so little compute goes to padding. Results come back in
        input order.

        Classifier-free guidance: with `negatives` (one conversation per conversation, e.g. the same
        request without the persona's system prompt) and `guidance` != 1, each step's next-token
        log-probs are `uncond + guidance * (cond - uncond)`, where `uncond` comes from a second,
        batched forward pass over the negatives (transformers' `guidance_scale` with
        `negative_prompt_ids`, which keeps its own cache for that branch)."""
        convs = [c for c in conversations for _ in range(params.n)]
        once = [self.tokenizer(self.render(c), add_special_tokens=False).input_ids for c in conversations]
        ids = [x for x in once for _ in range(params.n)]
        neg: list[list[int]] | None = None
        if negatives is not None and guidance != 1.0:
            if len(negatives) != len(conversations):
                raise ValueError(f"negatives: {len(negatives)} given for {len(conversations)} conversations; give one each")
            neg_once = [self.tokenizer(self.render(c), add_special_tokens=False).input_ids for c in negatives]
            neg = [x for x in neg_once for _ in range(params.n)]
        plan = []  # (shared head, batch of item indices)
        own = [0] * len(ids)  # each item's tokens after its group's shared head
        for items in by_system_prompt(convs):
            head = shared_prefix([ids[i] for i in items]) if self.prefix_cache and len(items) > 1 else 0
            for i in items:
                own[i] = len(ids[i]) - head
            order = sorted(items, key=lambda i: own[i])
            for batch in length_batches(order, own, self.batch_size, self.batch_size * TOKENS_PER_ROW):
                plan.append((ids[batch[0]][:head], batch))
        results: list[Completion | None] = [None] * len(convs)
        bar = None
        if progress:
            bar = tqdm(total=len(convs), desc=f"generate {self.name}", unit="seq")
        cached: tuple[list[int], object] | None = None  # the last head's cache (groups are consecutive)
        for b, (head, batch) in enumerate(plan):
            if params.seed is not None:
                torch.manual_seed(params.seed + b)
            if head and (cached is None or cached[0] != head):
                cached = (head, self._head_cache(head))
            new = self._generate_batch([ids[i][len(head):] for i in batch], head,
                                       cached[1] if head else None, params,
                                       [neg[i] for i in batch] if neg else None, guidance, json_schema)
            for row, i in enumerate(batch):
                results[i] = self._finish(new[row], params)
            if bar:
                bar.update(len(batch))
        if bar:
            bar.close()
        flat = [r for r in results if r is not None]
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(conversations))]

    def _fast(self, enabled: bool = True):
        """The context of generation and label reads: bf16 autocast where `self.autocast` (see __init__)."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and self.autocast)

    def _head_cache(self, head: list[int], fast: bool = True):
        """The key/value cache of a shared prompt head (under bf16 autocast where `fast` and the backend
        uses it, else in the model's dtype)."""
        with self._lock, torch.inference_mode(), self._fast(fast):
            out = self.model(input_ids=torch.tensor([head], device=self.device), use_cache=True, logits_to_keep=1)
        return out[CACHE_ARG]

    def _rows_cache(self, head_cache, rows: int):
        """The cache a batch of `rows` starts from: the head once (shared_head attention) or a copy per row."""
        shared = shared_head.shared_cache(head_cache) if self.shared_head else None
        return shared if shared is not None else per_row(head_cache, rows)

    def _left_padded(self, rows: list[list[int]], head: list[int] = ()):
        pad = self.tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        x = torch.tensor([list(head) + [pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(head) + [0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return x, mask

    def _generate_batch(self, rows: list[list[int]], head: list[int], head_cache, params: SamplingParams,
                        negatives: list[list[int]] | None = None, guidance: float = 1.0,
                        json_schema: dict | None = None) -> list[list[int]]:
        """Left-pad the rows' own tokens and decode them together; with a shared head, its cache is kept
        once for the batch (`_rows_cache`) and the padding sits between head and row (the attention mask
        hides it and position ids count only real tokens, so each row sees exactly its own prompt). With a
        `json_schema`, each step may only pick tokens that keep the answer a prefix of JSON valid for it."""
        x, mask = self._left_padded(rows, head)
        kwargs = self._gen_kwargs(params)
        if json_schema is not None:
            kwargs["prefix_allowed_tokens_fn"] = self._json_constraint(json_schema, x.shape[1])
        if negatives:
            kwargs["guidance_scale"] = guidance
            kwargs["negative_prompt_ids"], kwargs["negative_prompt_attention_mask"] = self._left_padded(negatives)
        with self._lock, torch.inference_mode(), self._fast():
            if head_cache is not None:
                kwargs[CACHE_ARG] = self._rows_cache(head_cache, len(rows))
            out = self.model.generate(input_ids=x, attention_mask=mask, **kwargs)
        return out[:, x.shape[1]:].tolist()

    def _json_constraint(self, json_schema: dict, prompt_width: int):
        """transformers' `prefix_allowed_tokens_fn` for one batch: per row, an llguidance matcher for the schema
        takes the tokens generated since the last step (after the prompt's `prompt_width`) and names, as a bit
        mask over the vocabulary, the tokens that may come next; the stop tokens only once the object is
        complete. Whitespace between JSON items is not allowed (a small model would spend its tokens on it)."""
        try:
            import llguidance
        except ImportError:
            raise MissingDependencyError("schema-constrained decoding needs llguidance; "
                                         "run: pip install -e '.[train]'") from None
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json_schema, overrides={"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "})
        first = llguidance.LLMatcher(self._guidance_tokenizer(), grammar, log_level=0)
        if first.is_error():  # a schema llguidance cannot follow: say so, rather than decode empty answers
            raise ModelSpecError(f"json_schema: llguidance cannot use it ({first.get_error()}); simplify the schema "
                                 "(e.g. drop a lookaround in a pattern)")
        stops = torch.tensor(sorted(self._stop_ids()))
        rows: dict[int, tuple[llguidance.LLMatcher, list[int]]] = {}

        def allowed(batch_id: int, input_ids: torch.Tensor) -> torch.Tensor:
            if batch_id not in rows:
                rows[batch_id] = (first.deep_copy(), [0])
            matcher, seen = rows[batch_id]
            new = input_ids[prompt_width + seen[0]:].tolist()
            seen[0] += len(new)
            if new and not matcher.is_stopped():
                matcher.consume_tokens(new)
            if matcher.is_stopped() or matcher.is_error():  # a finished row (its later tokens are padding); an
                return stops  # error mid-answer ends the row, and the structured layer re-asks
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            return torch.from_numpy(np.flatnonzero(bits[:len(self.tokenizer)]))
        return allowed

    def _guidance_tokenizer(self):
        """The tokenizer as llguidance reads it (built once per backend, about a second), with our stop tokens."""
        if getattr(self, "_ll_tokenizer", None) is None:
            import llguidance.hf
            self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, eos_token=sorted(self._stop_ids()))
        return self._ll_tokenizer

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self._encode([self.render(conversation)])
        if params.seed is not None:
            torch.manual_seed(params.seed)

        def work():
            with self._lock, torch.inference_mode(), self._fast():
                self.model.generate(**enc, **self._gen_kwargs(params), streamer=streamer)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    def logprobs(self, conversations: list[Conversation], responses: list[str], fast: bool = False) -> list[list[float]]:
        """Per-token log-probabilities of each response (its end-of-turn token included) given
        its conversation, with the chat template applied as in training. In float32, or under the
        backend's bf16 autocast with `fast` (for scores that compare two readings of the same answer,
        such as the persona score, where the rounding largely cancels). Conversations that share a
        long head (the same system prompt) are grouped and the head is computed once per group, as in
        `generate`."""
        seqs, n_prompt = [], []
        for conv, resp in zip(conversations, responses, strict=True):
            f_ids, n = response_token_ids(self.tokenizer, conv, resp)
            seqs.append(f_ids)
            n_prompt.append(n)
        out: list[list[float] | None] = [None] * len(seqs)
        step, pad = self.logprob_batch_size, self.tokenizer.pad_token_id
        for items in by_system_prompt(conversations):
            n_head = 0
            if self.prefix_cache and len(items) > 1:  # the head stays inside every prompt
                n_head = min(shared_prefix([seqs[i] for i in items]), min(n_prompt[i] for i in items) - 1)
                n_head = n_head if n_head >= PREFIX_MIN_TOKENS else 0
            head_cache = self._head_cache(seqs[items[0]][:n_head], fast) if n_head else None
            for start in range(0, len(items), step):
                batch = items[start:start + step]
                rows = [seqs[i][n_head:] for i in batch]
                width = max(len(r) for r in rows)  # right-padded: real tokens keep their positions
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
                mask = torch.tensor([[1] * (n_head + len(r)) + [0] * (width - len(r)) for r in rows], device=self.device)
                kwargs = {}
                if head_cache is not None:
                    kwargs[CACHE_ARG] = self._rows_cache(head_cache, len(rows))
                    kwargs["position_ids"] = torch.arange(n_head, n_head + width, device=self.device).expand(len(rows), -1)
                with self._lock, torch.inference_mode(), self._fast(fast):
                    logits = self.model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
                logits = logits[:, :-1]  # the log-softmax at the next tokens only, without writing it out in full
                logp = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                for row, i in enumerate(batch):
                    out[i] = logp[row, n_prompt[i] - n_head - 1:len(seqs[i]) - n_head - 1].tolist()
        return out

    def next_token_logprobs(self, conversations: list[Conversation], candidates: list[str]) -> list[list[float]]:
        """Log-probability of each candidate's first token as the first token of the assistant's answer
        (one forward pass per conversation, batched): how a judge's option labels are read."""
        ids = [self.tokenizer(c, add_special_tokens=False).input_ids[0] for c in candidates]
        seqs = [self.tokenizer(self.render(c), add_special_tokens=False).input_ids for c in conversations]
        out: list[list[float]] = []
        step = self.logprob_batch_size * 4  # only the last position's logits are kept: wider batches are cheap
        pad = self.tokenizer.pad_token_id
        n_head = shared_prefix(seqs) if self.prefix_cache and len(seqs) > 1 else 0
        head = seqs[0][:n_head] if seqs else []
        head_cache = self._head_cache(head) if head else None
        for start in range(0, len(seqs), step):
            rows = [s[n_head:] for s in seqs[start:start + step]]
            width = max(len(r) for r in rows)  # left-padded, so every row ends at the last position
            x = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[1] * n_head + [0] * (width - len(r)) + [1] * len(r) for r in rows],
                                device=self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_head:]
            kwargs = {}
            if head_cache is not None:
                kwargs[CACHE_ARG] = self._rows_cache(head_cache, len(rows))
            with self._lock, torch.inference_mode(), self._fast():
                logits = self.model(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                                    **kwargs).logits
            out += torch.log_softmax(logits[:, -1].float(), dim=-1)[:, ids].tolist()
        return out
