"""GPU throughput: generation tokens/s for transformers (and vLLM where installed) on the same model
and prompts, and training tokens/s for one DPO epoch with TRL + LoRA.

    .venv/bin/python benchmarks/gpu.py [--model embedded] [--pairs data/runs/pirate-cpu/distill/pairs.jsonl]

Generation counts completion tokens (greedy, fixed prompts). Training counts the tokens of every
chosen and rejected sequence (prompt + answer) in the epoch, divided by the trainer's wall time
(model loading excluded). Prints markdown rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from generation import convs  # noqa: E402  (the same prompts as the CPU generation benchmark)

from character.inference import get_backend  # noqa: E402
from character.recipe import TrainConfig  # noqa: E402
from character.types import PreferencePair, SamplingParams  # noqa: E402


def gen_rows(spec: str, n: int, max_tokens: int):
    import torch
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    rows = []
    hf = get_backend(spec)
    hf.generate(convs(4), params)  # warm-up
    for bs in (1, 16, 64):
        hf.batch_size = bs
        m = n if bs > 1 else 8
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = hf.generate(convs(m), params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        tok = sum(c.completion_tokens for o in out for c in o)
        rows.append((f"transformers, batch {bs}", m, tok, dt))
    try:
        import vllm  # noqa: F401
    except ImportError:
        rows.append(("vLLM: not installed on this machine", 0, 0, float("nan")))
        return rows
    from character.inference.vllm import VLLMBackend
    path = hf.path
    v = VLLMBackend(path, max_model_len=2048, gpu_memory_utilization=0.5)
    v.generate(convs(4), params)
    t = time.perf_counter()
    out = v.generate(convs(n), params)
    dt = time.perf_counter() - t
    rows.append(("vLLM, one call", n, sum(c.completion_tokens for o in out for c in o), dt))
    return rows


def dpo_epoch(spec: str, pairs_path: str, batch: int):
    import tempfile

    from character.inference import parse_spec
    from character.runs import read_jsonl
    from character.training import trl as T
    provider, model = parse_spec(spec)
    if provider == "embedded":
        from character.inference.embedded import embedded_model_path
        model = str(embedded_model_path())
    pairs = read_jsonl(__import__("pathlib").Path(pairs_path), PreferencePair)
    tok = T.load_model(model)[0]
    tokens = 0
    for p in pairs:
        head = tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        n = len(tok(head, add_special_tokens=False).input_ids)
        tokens += 2 * n + len(tok(p.chosen).input_ids) + len(tok(p.rejected).input_ids) + 2
    cfg = TrainConfig(rank=16, alpha=32, lr=2e-4, epochs=1, batch_size=batch, max_length=512, warmup_ratio=0.0)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = T.train_dpo(pairs, model, cfg, __import__("pathlib").Path(d), lambda step, row: None)
        total = time.perf_counter() - t
    return len(pairs), int(res["steps"]), tokens, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--pairs", default="data/runs/pirate-cpu/distill/pairs.jsonl")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    import torch
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| setting | prompts | generated tokens | seconds | tokens/s |\n|---|---|---|---|---|")
    for name, n, tok, dt in gen_rows(args.model, args.prompts, args.max_tokens):
        print(f"| {name} | {n} | {tok} | {dt:.2f} | {tok / dt if dt == dt and dt else float('nan'):.1f} |")
    n, steps, tokens, secs = dpo_epoch(args.model, args.pairs, args.batch)
    print("\n| DPO epoch | pairs | steps | tokens | seconds (incl. trainer setup) | tokens/s |\n|---|---|---|---|---|---|")
    print(f"| TRL + LoRA r16, batch {args.batch}, bf16 | {n} | {steps} | {tokens} | {secs:.1f} | {tokens / secs:.0f} |")


if __name__ == "__main__":
    main()
