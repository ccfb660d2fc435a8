"""Local transformers backend: batched generation (left padding, length buckets), streaming,
token log-probabilities of given responses, optional PEFT adapters.

Spec: `hf/<hub-id-or-path>` or `embedded`. Device: CUDA, then Apple MPS, then CPU; dtype bf16 on
GPUs that support it, float32 otherwise.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

from ..errors import MissingDependencyError, ModelSpecError
from ..types import Completion, Conversation, SamplingParams
from . import as_messages
from .scoring import response_token_ids

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
except ImportError as e:  # pragma: no cover - depends on installed extras
    raise MissingDependencyError(f"backend 'hf' needs {e.name}; run: pip install -e '.[train]'") from None


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


class HFBackend:
    supports_logprobs = True
    supports_prefill = True

    def __init__(self, model: str, name: str | None = None, adapters: list[str] | None = None,
                 device: str | None = None, batch_size: int | None = None, logprob_batch_size: int = 8):
        self.name = name or f"hf/{model}"
        self.path = model
        self.tokenizer, self.model = load_model(model, device)
        self.batch_size = batch_size or default_batch_size(self.model)
        self.logprob_batch_size = logprob_batch_size  # full-vocabulary logits per row: keep these batches small
        self.device = self.model.device
        self.adapters = list(adapters or [])
        if self.adapters:
            self.model = self._with_adapters(self.model, self.adapters)
        self._lock = threading.Lock()  # one forward pass at a time per model

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
        if len(adapters) == 1:
            return PeftModel.from_pretrained(model, adapters[0]).eval()
        # Several adapters are folded in one after another: each LoRA's delta B@A is independent
        # of the others, so this is exactly base + sum(delta_i).
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

    def _finish(self, token_ids: list[int], params: SamplingParams) -> Completion:
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
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
                 json_schema: dict | None = None, progress: bool = False) -> list[list[Completion]]:
        """Batched sampling. Prompts are sorted by token length and cut into batches of similar
        length, so little compute goes to padding; results come back in input order."""
        texts = [self.render(c) for c in conversations for _ in range(params.n)]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        results: list[Completion | None] = [None] * len(texts)
        batches = length_batches(order, lengths, self.batch_size, self.batch_size * TOKENS_PER_ROW)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(texts), desc=f"generate {self.name}", unit="seq")
        for b, batch in enumerate(batches):
            if params.seed is not None:
                torch.manual_seed(params.seed + b)
            enc = self._encode([texts[i] for i in batch])
            with self._lock, torch.inference_mode():
                out = self.model.generate(**enc, **self._gen_kwargs(params))
            new = out[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(batch):
                results[i] = self._finish(new[row].tolist(), params)
            if bar:
                bar.update(len(batch))
        if bar:
            bar.close()
        flat = [r for r in results if r is not None]
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(conversations))]

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self._encode([self.render(conversation)])
        if params.seed is not None:
            torch.manual_seed(params.seed)

        def work():
            with self._lock, torch.inference_mode():
                self.model.generate(**enc, **self._gen_kwargs(params), streamer=streamer)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    def logprobs(self, conversations: list[Conversation], responses: list[str]) -> list[list[float]]:
        """Per-token log-probabilities of each response (its end-of-turn token included) given
        its conversation, with the chat template applied as in training."""
        out: list[list[float]] = []
        step = self.logprob_batch_size
        for start in range(0, len(conversations), step):
            convs = conversations[start:start + step]
            resps = responses[start:start + step]
            seqs, n_prompt = [], []
            for conv, resp in zip(convs, resps):
                f_ids, n = response_token_ids(self.tokenizer, conv, resp)
                seqs.append(f_ids)
                n_prompt.append(n)
            width = max(len(s) for s in seqs)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for row, (s, p) in enumerate(zip(seqs, n_prompt)):
                out.append(logp[row, p - 1:len(s) - 1].tolist())
        return out

    def next_token_logprobs(self, conversations: list[Conversation], candidates: list[str]) -> list[list[float]]:
        """Log-probability of each candidate's first token as the first token of the assistant's answer
        (one forward pass per conversation, batched): how a judge's option labels are read."""
        ids = [self.tokenizer(c, add_special_tokens=False).input_ids[0] for c in candidates]
        texts = [self.render(c) for c in conversations]
        out: list[list[float]] = []
        step = self.logprob_batch_size * 4  # only the last position's logits are kept: wider batches are cheap
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(texts), step):
            seqs = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts[start:start + step]]
            width = max(len(s) for s in seqs)  # left-padded, so every row ends at the last position
            x = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            out += torch.log_softmax(logits[:, -1].float(), dim=-1)[:, ids].tolist()
        return out
