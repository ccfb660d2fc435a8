"""Generation throughput on the embedded model: hf backend one-at-a-time vs batched, float32 vs bf16
autocast, prompts under one long system prompt with and without the shared-head cache, the openai
backend against a local llama.cpp server serving the same GGUF, and (64 prompts) batch 16 vs 64 beside
CTranslate2's int8 and float32 engines when `ctranslate2` is installed (`pip install ctranslate2`; it
is not a dependency: see benchmarks/RESULTS.md for why).

    .venv/bin/python benchmarks/generation.py [--prompts 16] [--max-tokens 64] [--wide 64]

Prints a markdown table row per setting; paste it into benchmarks/RESULTS.md with the date,
commit and machine. Tokens/s counts generated (completion) tokens only.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from character.inference import get_backend  # noqa: E402
from character.types import Message, SamplingParams  # noqa: E402

PROMPTS = ["How do I boil an egg?", "Explain what a mortgage is.", "Give me three tips for sleeping better.",
           "What is the capital of Japan?", "Write a haiku about rain.", "Why is the sky blue?",
           "How do I start running?", "What is recursion?"]


def convs(n):
    return [[Message(role="user", content=PROMPTS[i % len(PROMPTS)])] for i in range(n)]


def timed(backend, conversations, params):
    t = time.perf_counter()
    out = backend.generate(conversations, params)
    dt = time.perf_counter() - t
    tokens = sum(c.completion_tokens for o in out for c in o)
    return tokens, dt


def wide_rows(hf, n, params):
    """Batch 16 vs 64 on n prompts, and CTranslate2 (converted from the cached safetensors) at 64, with
    how many greedy answers equal transformers'."""
    rows, ref = [], None
    for bf16 in (False, True):
        hf.autocast = bf16
        for bs in (16, 64):
            hf.batch_size = bs
            t = time.perf_counter()
            out = hf.generate(convs(n), params)
            dt = time.perf_counter() - t
            name = f"hf (embedded), batched {bs}, {'bf16 autocast' if bf16 else 'float32'}"
            if bf16:
                name += f" ({sum(a[0].text == b[0].text for a, b in zip(out, ref))}/{n} greedy answers equal float32's)"
            elif bs == 64:
                ref = out
            rows.append((name, n, sum(c[0].completion_tokens for c in out), dt))
    hf.autocast = False
    try:
        import ctranslate2
    except ImportError:
        return rows
    import tempfile

    from character.inference.embedded import embedded_model_path
    tok = hf.tokenizer
    prompts = [tok.convert_ids_to_tokens(tok(hf.render(c), add_special_tokens=False).input_ids) for c in convs(n)]
    for q in ("int8", "float32"):
        with tempfile.TemporaryDirectory() as out:
            ctranslate2.converters.TransformersConverter(str(embedded_model_path())).convert(out, quantization=q,
                                                                                            force=True)
            gen = ctranslate2.Generator(out, device="cpu", compute_type=q, intra_threads=os.cpu_count())
            gen.generate_batch(prompts[:2], max_length=4)  # warm-up
            t = time.perf_counter()
            res = gen.generate_batch(prompts, max_length=params.max_tokens, sampling_topk=1, max_batch_size=64,
                                     include_prompt_in_result=False, end_token=[tok.eos_token])
            dt = time.perf_counter() - t
        ids = [[i for i in r.sequences_ids[0] if i != tok.eos_token_id] for r in res]
        same = sum(tok.decode(x, skip_special_tokens=True).strip() == o[0].text for x, o in zip(ids, ref))
        rows.append((f"CTranslate2 {q}, batch 64 ({same}/{n} greedy answers equal transformers')", n,
                     sum(map(len, ids)), dt))
    return rows


def teacher_rows(hf, n, params):
    """The distillation teacher's case: n prompts under the pirate constitution's system prompt, with and
    without the shared head's cache (hf.prefix_cache), and how many greedy answers agree."""
    from character import constitution as C
    from character.distill import teacher_conversation
    c = C.load("pirate")
    teach = [teacher_conversation(c, x[0].content) for x in convs(n)]
    rows, outs = [], {}
    hf.autocast = False
    for flag in (False, True):
        hf.prefix_cache, hf.batch_size = flag, 64
        t = time.perf_counter()
        outs[flag] = hf.generate(teach, params)
        dt = time.perf_counter() - t
        rows.append((f"hf (embedded), batched 64, float32, under the constitution, shared-head cache {'on' if flag else 'off'}",
                     n, sum(o[0].completion_tokens for o in outs[flag]), dt))
    same = sum(a[0].text == b[0].text for a, b in zip(outs[False], outs[True]))
    rows[-1] = (rows[-1][0] + f" ({same}/{n} greedy answers equal)", *rows[-1][1:])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--wide", type=int, default=64, help="prompts for the wide-batch and CTranslate2 rows (0: skip)")
    args = ap.parse_args()
    # min_tokens is not portable, so greedy decoding with a fixed prompt set keeps runs comparable.
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    hf = get_backend("embedded")
    default_autocast = hf.autocast
    hf.autocast = False  # the first rows are float32, as measured before bf16 autocast existed
    hf.generate(convs(2), params)  # warm-up
    rows = []
    tok, dt = 0, 0.0
    for c in convs(args.prompts):
        t, d = timed(hf, [c], params)
        tok, dt = tok + t, dt + d
    rows.append(("hf (embedded), one at a time", args.prompts, tok, dt))
    for bs in (8, 16):
        hf.batch_size = bs
        tok, dt = timed(hf, convs(args.prompts), params)
        rows.append((f"hf (embedded), batched {bs}", args.prompts, tok, dt))

    if args.wide:
        rows += wide_rows(hf, args.wide, params)
        rows += teacher_rows(hf, args.wide, params)
    hf.autocast = default_autocast

    from character.inference.embedded import gguf_path
    from character.inference.openai_compat import OpenAIBackend
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                               "--model_alias", "smollm2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        for conc in (1, 4):
            oa = OpenAIBackend("smollm2", base_url=f"http://127.0.0.1:{port}/v1", max_concurrency=conc)
            oa.generate(convs(1), params)
            tok, dt = timed(oa, convs(args.prompts), params)
            rows.append((f"openai -> llama.cpp server (Q4_1 GGUF), concurrency {conc}", args.prompts, tok, dt))
    finally:
        server.terminate()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print("| setting | prompts | generated tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|")
    for name, n, tok, dt in rows:
        print(f"| {name} | {n} | {tok} | {dt:.1f} | {tok / dt:.1f} |")


if __name__ == "__main__":
    main()
