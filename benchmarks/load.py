"""Embedded model load time: first use (GGUF dequantized by transformers, then cached as
safetensors) vs every later load from the cache.

    .venv/bin/python benchmarks/load.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHARACTER_MODELS"] = tmp
        from character.inference.embedded import embedded_model_path
        from character.inference.hf import load_model
        t = time.perf_counter()
        path = embedded_model_path()
        first = time.perf_counter() - t
        t = time.perf_counter()
        load_model(str(path))
        cached = time.perf_counter() - t
    print("| load | seconds |\n|---|---|")
    print(f"| first use: GGUF -> float32 + safetensors cache | {first:.1f} |")
    print(f"| later loads: from the safetensors cache | {cached:.1f} |")


if __name__ == "__main__":
    main()
