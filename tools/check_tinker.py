"""Check a Tinker setup: the key is set, the service answers, which base models it offers, and one
tiny sample from a model. No key is printed.

    .venv/bin/python tools/check_tinker.py [BASE_MODEL]    # default: meta-llama/Llama-3.1-8B-Instruct
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from character.errors import CharacterError  # noqa: E402
from character.settings import load_env  # noqa: E402


def main() -> int:
    load_env()
    model = sys.argv[1] if len(sys.argv) > 1 else "meta-llama/Llama-3.1-8B-Instruct"
    try:
        from character.inference import get_backend
        from character.training.tinker import connect
        from character.types import Message, SamplingParams
        _, rest = connect()  # a clear one-line error without the SDK or TINKER_API_KEY
        print("TINKER_API_KEY: set")
        caps = rest.get_server_capabilities().result()
        print(f"{len(caps.supported_models)} base models offered:")
        for m in caps.supported_models:
            flags = ", ".join(f for f in ("trainable", "sampleable") if getattr(m, f, False))
            print(f"  {m.model_name:50} {flags}")
        if model not in [m.model_name for m in caps.supported_models]:
            print(f"error: {model!r} is not offered; pick one above", file=sys.stderr)
            return 1
        t = time.time()
        out = get_backend(f"tinker/{model}").generate([[Message(role="user", content="Say hello in five words.")]],
                                                       SamplingParams(max_tokens=16, temperature=0.0))
        print(f"sample from {model} in {time.time() - t:.1f}s: {out[0][0].text!r}")
        return 0
    except CharacterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a network or service failure, reported in one line
        print(f"error: the Tinker service did not answer ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
