"""DPO step time on a run's own pairs: TRL's trainer step beside a bare PyTorch forward + backward of
the same rows, padded as the trainer pads them and unpadded (one row at a time), so the gap between
the trainer and the arithmetic can be read off (issue 13). A last row keeps the LM head's product in float32, as
TRL's chunked log-prob kernel does on a CPU, so a bf16 trainer step can be set beside the same precision.

    .venv/bin/python benchmarks/dpo.py [RUN] [--steps 8]     (RUN: a run whose distill stage is done)

Tokens are real (non-padding) prompt + answer tokens of the chosen and rejected rows. The trainer
precomputes the reference log-probs once per pair (as `character train dpo` does); that pass is
timed on its own. Prints markdown rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.t)


def completion_logps(model, ids, mask, completion, fp32_head: bool = False):
    """Summed log-probs of the completion tokens. `fp32_head`: the LM head's product in float32 outside autocast,
    as TRL 1.16's chunked log-prob kernel does on a CPU (it upcasts each vocabulary tile)."""
    if fp32_head:
        causal = model.get_base_model()
        hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        with torch.autocast("cpu", enabled=False):
            logits = hidden.float() @ causal.lm_head.weight.float().T
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * completion[:, 1:]).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="pirate-cpu")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    a = ap.parse_args()

    from datasets import Dataset
    from trl import DPOTrainer

    from character.distill import split, to_trl
    from character.recipe import load_recipe
    from character.runs import read_jsonl, run_dir
    from character.train import student_path
    from character.training.trl import load_base, lora_config, trainer_args
    from character.types import PreferencePair

    rdir = run_dir(a.run)
    cfg = load_recipe(rdir / "recipe.yaml")
    pairs = split(read_jsonl(rdir / "distill" / "pairs.jsonl", PreferencePair), cfg.distill.heldout)[0]
    tokenizer, model = load_base(student_path(cfg.models.student))
    dcfg = cfg.dpo.model_copy(update={"precision": a.precision})
    args = trainer_args(dcfg, rdir / "bench-dpo", "dpo")
    args.max_steps, args.disable_tqdm = a.steps, True
    timer = StepTimer()
    t = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([to_trl(p) for p in pairs]),
                         processing_class=tokenizer, peft_config=lora_config(dcfg), callbacks=[timer])
    setup = time.perf_counter() - t
    batches = [b for _, b in zip(range(a.steps), trainer.get_train_dataloader())]
    t = time.perf_counter()
    trainer.train()
    train = time.perf_counter() - t

    real = [int(b["attention_mask"].sum()) for b in batches]
    padded = [b["attention_mask"].numel() for b in batches]
    policy = trainer.model
    policy.train()

    def bare(unpadded: bool, fp32_head: bool = False) -> list[float]:
        out = []
        for b in batches:
            t = time.perf_counter()
            rows = ([(b["input_ids"][i:i + 1, :n], b["attention_mask"][i:i + 1, :n], b["completion_mask"][i:i + 1, :n])
                     for i, n in enumerate(b["attention_mask"].sum(-1).tolist())] if unpadded else
                    [(b["input_ids"], b["attention_mask"], b["completion_mask"])])
            for ids, mask, comp in rows:
                completion_logps(policy, ids, mask, comp, fp32_head).sum().backward()
            policy.zero_grad(set_to_none=True)
            out.append(time.perf_counter() - t)
        return out

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16 and not torch.cuda.is_available()):
        bare_padded, bare_unpadded, bare_fp32_head = bare(False), bare(True), bare(False, fp32_head=True)
    steps = timer.seconds[1:]  # the first step pays one-time costs
    n = len(steps)
    mean_real = sum(real[1:n + 1]) / n

    def row(name, secs):
        s = sum(secs) / len(secs)
        return f"| {name} | {s:.2f} | {mean_real / s:.0f} |"

    print(f"precision {'bf16 mixed' if args.bf16 else 'fp32'}; {len(pairs)} train pairs, batch {cfg.dpo.batch_size}, torch threads {torch.get_num_threads()}; "
          f"trainer setup (tokenising + reference log-probs) {setup:.1f} s, train() {train:.1f} s for {a.steps} steps; "
          f"real tokens per step {mean_real:.0f}, padded {sum(padded[1:n + 1]) / n:.0f}")
    print("| setting | seconds per step | real tokens/s |\n|---|---|---|")
    print(row("TRL DPOTrainer step (policy forward + backward, losses, optimizer)", steps))
    print(row("bare forward + backward, padded batch", bare_padded[1:n + 1]))
    print(row("bare forward + backward, one row at a time, unpadded", bare_unpadded[1:n + 1]))
    print(row("bare forward + backward, padded batch, LM head in float32 (as TRL's kernel)", bare_fp32_head[1:n + 1]))


if __name__ == "__main__":
    main()
