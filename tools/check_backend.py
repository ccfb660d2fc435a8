"""Check that a model spec answers: one short chat, with timing. No key is printed.

    .venv/bin/python tools/check_backend.py [SPEC]        # default: embedded
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 .venv/bin/python tools/check_backend.py openai/my-model
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from character.errors import CharacterError  # noqa: E402
from character.inference import get_backend  # noqa: E402
from character.settings import key_status, load_env  # noqa: E402
from character.types import Message, SamplingParams  # noqa: E402


def main() -> int:
    load_env()
    spec = sys.argv[1] if len(sys.argv) > 1 else "embedded"
    print("keys set:", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in key_status().items()))
    try:
        t = time.time()
        backend = get_backend(spec)
        loaded = time.time() - t
        t = time.time()
        out = backend.generate([[Message(role="user", content="Say hello in one short sentence.")]],
                               SamplingParams(max_tokens=24, temperature=0))[0][0]
    except CharacterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{spec}: loaded in {loaded:.1f}s, answered in {time.time() - t:.1f}s: {out.text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
