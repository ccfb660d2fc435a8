"""Generation throughput on the embedded model: hf backend one-at-a-time vs batched, and the
openai backend against a local llama.cpp server serving the same GGUF.

    .venv/bin/python benchmarks/generation.py [--prompts 16] [--max-tokens 64]

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    # min_tokens is not portable, so greedy decoding with a fixed prompt set keeps runs comparable.
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    hf = get_backend("embedded")
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
