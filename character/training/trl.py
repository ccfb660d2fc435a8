"""Local LoRA training with TRL + PEFT: DPO on preference pairs, SFT on conversations.

DPO's reference model is the base with the adapter disabled (TRL does this when given a PEFT
config), so one model sits in memory. The NLL (RPO) term is TRL's "sft" loss added with the
recipe's weight. SFT supervises every assistant turn (not only the last), using our own
assistant-token mask, since most chat templates have no generation markers.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from peft import LoraConfig, PeftModel
from transformers import TrainerCallback

from ..distill import to_trl
from ..inference.hf import HFBackend, cpu_has_bf16, load_model
from ..inference.scoring import heldout_preference_metrics, tokenize_for_sft
from ..types import PreferencePair, SFTExample

LogFn = Callable[[int, dict], None]


def lora_config(cfg) -> LoraConfig:
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")


def use_bf16(precision: str = "auto") -> bool:
    """Mixed bf16 training (weights and LoRA parameters stay fp32; matrix products run in bf16). On the
    2-core CPU with AVX512-BF16 a DPO step of the demo took 6.7 s instead of 10.9 in fp32 (1.6x; the bare
    forward + backward 2.0x; benchmarks/RESULTS.md)."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def trainer_args(cfg, out_dir: Path, kind: str):
    """Our small TrainConfig mapped onto TRL's config, in one visible place."""
    from trl import DPOConfig, SFTConfig
    common = dict(output_dir=str(out_dir / "trainer"), learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
                  per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                  max_length=cfg.max_length, lr_scheduler_type="cosine",
                  # transformers >= 5 reads a float below 1 as a share of the steps (warmup_ratio is deprecated)
                  warmup_steps=cfg.warmup_ratio,
                  seed=cfg.seed, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=False,
                  bf16=use_bf16(cfg.precision),
                  use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    # TRL's configs turn checkpointing on by default; ours is off unless the recipe asks (recomputing the forward
    # cost about a tenth of a DPO step on the CPU demo; a small model has memory to spare). Newer transformers: activation_...
    name = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(SFTConfig)} else \
        "gradient_checkpointing"
    common[name] = cfg.gradient_checkpointing
    if kind == "dpo":
        losses, weights = (["sigmoid", "sft"], [1.0, cfg.nll]) if cfg.nll > 0 else (["sigmoid"], [1.0])
        # the reference (base, adapter off) log-probs are computed once per pair before training, not every
        # step of every epoch; one process only (TRL 1.16's precompute reads a per-rank temporary datasets cache
        # that another rank cannot open under torchrun)
        return DPOConfig(beta=cfg.beta, loss_type=losses, loss_weights=weights,
                         precompute_ref_log_probs=cfg.num_processes == 1,
                         precompute_ref_batch_size=max(8, cfg.batch_size), **common)
    return SFTConfig(packing=False, **common)


class _Metrics(TrainerCallback):
    def __init__(self, log_metrics: LogFn):
        self.log_metrics = log_metrics
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:  # one writer under multi-GPU training
            row = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            self.history.append(row)
            self.log_metrics(state.global_step, row)


def _adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def load_base(base: str, init_adapters: list[str] = (), load_in_4bit: bool = False):
    """The student, with earlier adapters folded into its weights (SFT trains on the DPO-merged model).
    QLoRA (load_in_4bit): 4-bit weights cannot take a merge, so the merge is done once in full
    precision on the CPU, saved beside the first adapter (merged-student/), and that is quantised."""
    if load_in_4bit and init_adapters:
        merged = Path(init_adapters[0]).parent / "merged-student"
        if not (merged / "config.json").exists():
            tokenizer, model = load_model(base, device="cpu", dtype=torch.bfloat16)
            for path in init_adapters:
                model = PeftModel.from_pretrained(model, path).merge_and_unload()
            model.save_pretrained(merged)
            tokenizer.save_pretrained(merged)
        base, init_adapters = str(merged), []
    tokenizer, model = load_model(base, load_in_4bit=load_in_4bit)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for path in init_adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    tokenizer.padding_side = "right"  # training pads on the right; generation uses left
    return tokenizer, model


def train_dpo(pairs: list[PreferencePair], base: str, cfg, out_dir: Path, log_metrics: LogFn) -> dict:
    from datasets import Dataset
    from trl import DPOTrainer

    tokenizer, model = load_base(base, load_in_4bit=cfg.load_in_4bit)
    dataset = Dataset.from_list([to_trl(p) for p in pairs])
    cb = _Metrics(log_metrics)
    trainer = DPOTrainer(model=model, args=trainer_args(cfg, out_dir, "dpo"), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=[cb])
    before = _adapter_state(trainer.model)
    trainer.train()
    return _finish(trainer, tokenizer, before, cb, out_dir)


def train_sft(examples: list[SFTExample], base: str, cfg, out_dir: Path, log_metrics: LogFn,
              init_adapters: list[str] = ()) -> dict:
    from datasets import Dataset
    from trl import SFTTrainer

    tokenizer, model = load_base(base, init_adapters, load_in_4bit=cfg.load_in_4bit)
    rows = [tokenize_for_sft(tokenizer, [m.model_dump() for m in ex.messages], cfg.max_length) for ex in examples]
    rows = [r for r in rows if any(r["assistant_masks"])]
    dataset = Dataset.from_list(rows)
    cb = _Metrics(log_metrics)
    trainer = SFTTrainer(model=model, args=trainer_args(cfg, out_dir, "sft"), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=[cb])
    before = _adapter_state(trainer.model)
    trainer.train()
    return _finish(trainer, tokenizer, before, cb, out_dir)


def _finish(trainer, tokenizer, before: dict, cb: _Metrics, out_dir: Path) -> dict:
    after = _adapter_state(trainer.model)
    # this rank's part only: under ZeRO-3 or FSDP a rank may hold an empty shard of a tensor
    change = max([(after[k] - before[k]).abs().max().item() for k in before if before[k].numel()] or [0.0])
    adapter = out_dir / "adapter"
    # Every rank calls the trainer's own save: under ZeRO-3 and FSDP the LoRA weights are partitioned, and
    # save_model gathers them (a rank-0-only save_pretrained would write its shard); only rank 0 writes.
    trainer.save_model(str(adapter))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(adapter)
        (adapter / "training_args.bin").unlink(missing_ok=True)  # the trainer's pickle; not part of an adapter
    losses = [h["loss"] for h in cb.history if "loss" in h]
    k = max(1, len(losses) // 4)
    return {"steps": trainer.state.global_step, "adapter_max_change": change,
            "loss_first": sum(losses[:k]) / k if losses else math.nan,
            "loss_last": sum(losses[-k:]) / k if losses else math.nan}


# -- evaluation of a trained adapter -------------------------------------------------------------

def preference_metrics(base: str, adapter: str, pairs: list[PreferencePair], beta: float,
                       init_adapters: list[str] = ()) -> dict:
    """The held-out check (scoring.heldout_preference_metrics), with log-probs from the inference backend's
    scorer: the trained adapter on (policy) and off (reference, as in DPO)."""
    if not pairs:
        return {}
    tokenizer, model = load_base(base, init_adapters)
    model = PeftModel.from_pretrained(model, adapter).eval()
    scorer = HFBackend.from_model(tokenizer, model, name=f"hf/{base}+{adapter}")

    def reference(conversations, responses):
        with model.disable_adapter():
            return scorer.logprobs(conversations, responses)

    return heldout_preference_metrics(scorer.logprobs, reference, pairs, beta)
