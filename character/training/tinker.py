"""Remote LoRA training on Tinker, with the same interface as trl.py. Selected by `backend: tinker`
in a recipe's dpo/sft section; the student is `tinker/<base-model>` (or `hf/<id>` of a model the
service offers). Needs the extra `tinker` and TINKER_API_KEY.

- Tokens: the chat template is applied with the model's own tokenizer and the same assistant mask
  as the local SFT path (`inference.scoring.tokenize_for_sft`), so both backends train on the same tokens.
- SFT: the built-in `cross_entropy` loss (a plain sum of -logprob x weight). Weights are 1 on every
  assistant token, then divided by the example's assistant-token count, so each example counts
  once whatever its length (per-example normalisation; the cookbook's "mean" reduction).
- DPO: a custom loss (`forward_backward_custom`): sequence log-probs are weight-summed over the
  answer tokens; reference log-probs come from a frozen sampler saved before the first step;
  loss = mean(-logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))) + nll * (token-mean NLL of the
  chosen answers), which is TRL's ["sigmoid", "sft"] loss (tested to 1e-5).
- Learning rate: linear warm-up then cosine decay, sent with every `optim_step` (Tinker has no
  server-side schedule). Adam betas (0.9, 0.95), eps 1e-8 as in the cookbook.
- Checkpoints: `save_state` every `SAVE_EVERY` steps and at the end (for resuming; recorded in
  tinker.json); a sampler checkpoint at the end (for `tinker/tinker://...` sampling); the final
  weights exported (`save_weights_external`), downloaded and written as a PEFT adapter in
  <stage>/adapter, so chat, merge and evaluation work on them locally.
- SFT after DPO continues the DPO weights (Tinker cannot train on a merged model); the adapter
  then holds DPO + SFT, and the merge stage subtracts the DPO part so the recipe's weights still
  mean "w_dpo x DPO + w_sft x SFT" exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm import tqdm

from ..errors import CharacterError, MissingDependencyError, MissingKeyError
from ..inference.scoring import heldout_preference_metrics, tokenize_for_sft
from ..inference.tinker import TinkerBackend
from ..recipe import tinker_layers
from ..runs import write_json
from ..settings import env
from ..types import PreferencePair, SFTExample

LogFn = Callable[[int, dict], None]
SAVE_EVERY = 20
INSTALL = "pip install -e '.[tinker]'"


def connect(api_key: str | None = None):
    """(ServiceClient, RestClient). Tests replace this function with a fake at the SDK boundary."""
    try:
        import tinker
    except ImportError:
        raise MissingDependencyError(f"dpo.backend/sft.backend 'tinker' needs the Tinker SDK; run: {INSTALL}") from None
    key = api_key or env("TINKER_API_KEY")
    if not key:
        raise MissingKeyError("TINKER_API_KEY is not set; the tinker backend needs it (put it in the environment "
                              "or .env; get one at https://tinker-console.thinkingmachines.ai)")
    return tinker.ServiceClient(api_key=key), tinker.RestClient(api_key=key)


def tinker_types():
    from tinker import types
    return types


def check_model(rest, base_model: str, rank: int) -> None:
    """Clear errors for what the service would refuse: an unknown base model, a bad rank."""
    caps = rest.get_server_capabilities().result()
    names = [m.model_name for m in caps.supported_models]
    if base_model not in names:
        raise CharacterError(f"models.student={base_model!r}: Tinker does not offer this base model; "
                             f"choose one of: {', '.join(sorted(names)[:12])}{' ...' if len(names) > 12 else ''}")
    if rank <= 0 or rank & (rank - 1):
        raise CharacterError(f"rank={rank}: Tinker wants a LoRA rank that is a power of two (8, 16, 32, 64, ...)")


def lr_at(step: int, total: int, lr: float, warmup_ratio: float) -> float:
    warm = int(total * warmup_ratio)
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


# -- datums --------------------------------------------------------------------------------------

def datum(tokens: list[int], weights: list[float]):
    """Next-token alignment: input toks[:-1], targets toks[1:], weights of the targets."""
    t = tinker_types()
    return t.Datum(model_input=t.ModelInput.from_ints(tokens[:-1]),
                   loss_fn_inputs={"target_tokens": tokens[1:], "weights": [float(w) for w in weights[1:]]})


def sft_datums(tokenizer, examples: list[SFTExample], max_length: int) -> list:
    out = []
    for ex in examples:
        row = tokenize_for_sft(tokenizer, [m.model_dump() for m in ex.messages], max_length)
        n = sum(row["assistant_masks"][1:])
        if n == 0:
            continue
        out.append(datum(row["input_ids"], [m / n for m in row["assistant_masks"]]))
    return out


def dpo_datums(tokenizer, pairs: list[PreferencePair], max_length: int) -> list:
    """Two datums per pair, chosen at even and rejected at odd positions; weights 1 on the answer."""
    out = []
    for p in pairs:
        for answer in (p.chosen, p.rejected):
            row = tokenize_for_sft(tokenizer, [{"role": "user", "content": p.prompt},
                                               {"role": "assistant", "content": answer}], max_length)
            out.append(datum(row["input_ids"], row["assistant_masks"]))
    return out


# -- the DPO loss --------------------------------------------------------------------------------

def dpo_loss(policy_logprobs: list, ref_logprobs: list, weights: list, beta: float, nll: float):
    """Per-token log-probs of interleaved (chosen, rejected) sequences -> (loss, metrics).
    Matches TRL's DPO with loss_type ["sigmoid", "sft"] and loss_weights [1, nll]."""
    import torch
    import torch.nn.functional as F
    seq = [(lp * w).sum() for lp, w in zip(policy_logprobs, weights, strict=True)]
    ref = [(lp * w).sum() for lp, w in zip(ref_logprobs, weights, strict=True)]
    pc, pr = torch.stack(seq[0::2]), torch.stack(seq[1::2])
    rc, rr = torch.stack(ref[0::2]), torch.stack(ref[1::2])
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    if nll > 0:
        tok_lp = torch.cat([lp[w > 0] for lp, w in zip(policy_logprobs[0::2], weights[0::2], strict=True)])
        loss = loss + nll * (-tok_lp.mean())
    margins = beta * (chosen_ratio - rejected_ratio).detach()
    return loss, {"rewards/chosen": float(beta * chosen_ratio.detach().mean()),
                  "rewards/rejected": float(beta * rejected_ratio.detach().mean()),
                  "rewards/margins": float(margins.mean()),
                  "rewards/accuracies": float((margins > 0).float().mean())}


# -- the training loops --------------------------------------------------------------------------

def _client(base: str, cfg, init_state: str | None):
    sc, rest = connect()
    check_model(rest, base, cfg.rank)
    if init_state:  # continue from earlier weights with a fresh optimizer
        tc = sc.create_training_client_from_state(init_state).result()
    else:
        # PEFT's all-linear leaves out lm_head, so no unembedding LoRA here either
        tc = sc.create_lora_training_client(base_model=base, rank=cfg.rank, seed=cfg.seed, train_unembed=False,
                                            **tinker_layers(cfg.target_modules)).result()
    return sc, rest, tc


def _batches(items: list, size: int, epochs: float, seed: int) -> list[list]:
    rng = random.Random(seed)
    order: list = []
    for _ in range(max(1, math.ceil(epochs))):
        idx = list(range(len(items)))
        rng.shuffle(idx)
        order += idx
    order = order[:max(1, round(len(items) * epochs))]
    return [[items[i] for i in order[s:s + size]] for s in range(0, len(order), size)]


def _adam(lr: float):
    return tinker_types().AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-8)


def _loss_value(out) -> float:
    return float(out.metrics.get("loss:sum", math.nan))


def train_sft(examples: list[SFTExample], base: str, cfg, out_dir: Path, log_metrics: LogFn,
              init_adapters: list[str] = ()) -> dict:
    init_state = _state_of(init_adapters)
    sc, rest, tc = _client(base, cfg, init_state)
    data = sft_datums(tc.get_tokenizer(), examples, cfg.max_length)
    if not data:
        raise CharacterError("sft: no example has assistant tokens within max_length; raise sft.max_length")
    batches = _batches(data, cfg.batch_size * cfg.grad_accum, cfg.epochs, cfg.seed)
    losses = []
    for step, batch in enumerate(tqdm(batches, desc="sft (tinker)", unit="step")):
        lr = lr_at(step, len(batches), cfg.lr, cfg.warmup_ratio)
        fwd = tc.forward_backward(batch, "cross_entropy")
        opt = tc.optim_step(_adam(lr))
        out = fwd.result()
        opt.result()
        loss = _loss_value(out) / len(batch)  # weights sum to 1 per example: mean NLL per token
        losses.append(loss)
        log_metrics(step + 1, {"loss": loss, "learning_rate": lr})
        _maybe_save(tc, out_dir, step + 1, len(batches))
    return _finish(tc, rest, base, cfg, out_dir, losses, len(batches), continues=init_state is not None)


def train_dpo(pairs: list[PreferencePair], base: str, cfg, out_dir: Path, log_metrics: LogFn) -> dict:
    import torch
    sc, rest, tc = _client(base, cfg, None)
    data = dpo_datums(tc.get_tokenizer(), pairs, cfg.max_length)
    reference = tc.save_weights_and_get_sampling_client().result()  # frozen copy, before any step
    t = tinker_types()

    def ref_logprobs(d) -> list[float]:
        seq = d.model_input.to_ints() + [d.loss_fn_inputs["target_tokens"].tolist()[-1]]
        return reference.compute_logprobs(t.ModelInput.from_ints(seq)).result()[1:]

    refs = [torch.tensor(ref_logprobs(d)) for d in tqdm(data, desc="reference log-probs", unit="seq")]
    pair_idx = list(range(len(pairs)))
    batches = _batches(pair_idx, cfg.batch_size * cfg.grad_accum, cfg.epochs, cfg.seed)
    losses = []
    for step, batch in enumerate(tqdm(batches, desc="dpo (tinker)", unit="step")):
        items = [data[2 * i + k] for i in batch for k in (0, 1)]
        ref = [refs[2 * i + k] for i in batch for k in (0, 1)]
        weights = [torch.tensor(d.loss_fn_inputs["weights"].tolist()) for d in items]
        metrics: dict = {}

        def loss_fn(_data, logprobs_list, ref=ref, weights=weights, metrics=metrics):
            loss, m = dpo_loss(logprobs_list, ref, weights, cfg.beta, cfg.nll)
            metrics.update(m)
            return loss, m

        lr = lr_at(step, len(batches), cfg.lr, cfg.warmup_ratio)
        out = tc.forward_backward_custom(items, loss_fn).result()
        tc.optim_step(_adam(lr)).result()
        loss = _loss_value(out)
        losses.append(loss)
        log_metrics(step + 1, {"loss": loss, "learning_rate": lr, **metrics})
        _maybe_save(tc, out_dir, step + 1, len(batches))
    return _finish(tc, rest, base, cfg, out_dir, losses, len(batches), continues=False)


def _record(out_dir: Path, **fields) -> dict:
    path = out_dir / "tinker.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    write_json(path, data)
    return data


def _state_of(init_adapters) -> str | None:
    """The Tinker training state behind an earlier stage's adapter, if it was trained on Tinker."""
    for a in init_adapters:
        rec = Path(a).parent / "tinker.json"
        if rec.exists():
            return json.loads(rec.read_text()).get("state")
    return None


def _maybe_save(tc, out_dir: Path, step: int, total: int) -> None:
    if step % SAVE_EVERY == 0 and step < total:
        _record(out_dir, state=tc.save_state(f"step-{step:05d}").result().path, state_step=step)


def _finish(tc, rest, base: str, cfg, out_dir: Path, losses: list[float], steps: int, continues: bool) -> dict:
    state = tc.save_state("final").result().path
    sampler = tc.save_weights_for_sampler("final").result().path
    external = tc.save_weights_external("final").result().path
    raw = out_dir / "tinker_adapter"
    download(rest, external, raw)
    to_peft(raw, out_dir / "adapter", base, cfg.rank)
    _record(out_dir, state=state, state_step=steps, sampler=sampler, external=external, base_model=base,
            continues_dpo=continues)
    k = max(1, len(losses) // 4)
    return {"steps": steps, "loss_first": sum(losses[:k]) / k if losses else math.nan,
            "loss_last": sum(losses[-k:]) / k if losses else math.nan}


def safe_target(out: Path, rel: str) -> Path:
    """Where a downloaded checkpoint file may go: inside `out`, never through a link. Refuses
    absolute names, `..`, backslashes and any existing symlink on the way."""
    parts = PurePosixPath(rel).parts
    if (not rel or "\\" in rel or PurePosixPath(rel).is_absolute() or ".." in parts or "\x00" in rel
            or Path(rel).is_absolute()):
        raise CharacterError(f"tinker download: refusing file name {rel!r} (absolute, '..' or odd characters)")
    cur = out
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise CharacterError(f"tinker download: refusing file name {rel!r} ({cur} is a link)")
    if not cur.resolve().is_relative_to(out.resolve()):
        raise CharacterError(f"tinker download: refusing file name {rel!r} (outside {out})")
    return cur


def download(rest, external_path: str, out: Path) -> Path:
    urls = rest.get_external_weights_urls(external_path).result().urls
    out.mkdir(parents=True, exist_ok=True)
    targets = {rel: safe_target(out, rel) for rel in urls}  # check every name before writing any file
    for rel, url in urls.items():
        target = targets[rel]
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with urllib.request.urlopen(url, timeout=300) as r, os.fdopen(fd, "wb") as f:  # noqa: S310 - signed https URL
            f.write(r.read())
    return out


def to_peft(raw: Path, out: Path, base: str, rank: int) -> Path:
    """Tinker's adapter files -> a PEFT LoRA adapter. Dense models: the keys are already PEFT-style;
    write a PEFT config from them. (MoE and fused-projection models need the cookbook's
    `tinker_cookbook.weights.build_lora_adapter`, used when it is installed.)"""
    try:
        from tinker_cookbook.weights import build_lora_adapter
        build_lora_adapter(base_model=base, adapter_path=str(raw), output_path=str(out))
        return out
    except ImportError:
        pass
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(raw / "adapter_model.safetensors"))
    if any("unembed_tokens" in k or "experts" in k for k in tensors):
        raise CharacterError(f"{raw}: this adapter needs the Tinker cookbook to convert; run: pip install tinker-cookbook")
    cfg = json.loads((raw / "adapter_config.json").read_text())
    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors if ".lora_" in k})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    peft_cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
                "r": cfg.get("r", rank), "lora_alpha": cfg.get("lora_alpha", cfg.get("r", rank)),
                "target_modules": modules, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
                "fan_in_fan_out": False, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2))
    return out


def preference_metrics(base: str, adapter: str, pairs: list[PreferencePair], beta: float,
                       init_adapters: list[str] = ()) -> dict:
    """The held-out check (scoring.heldout_preference_metrics), with log-probs from Tinker samplers read
    through the Tinker inference backend: the trained weights (the stage's sampler checkpoint) against the
    base model."""
    if not pairs:
        return {}
    rec = json.loads((Path(adapter).parent / "tinker.json").read_text())
    sc, _ = connect()
    policy = TinkerBackend(rec["sampler"], service_client=sc)
    reference = TinkerBackend(base, service_client=sc)
    return heldout_preference_metrics(policy.logprobs, reference.logprobs, pairs, beta)
