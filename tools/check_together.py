"""Check a Together setup: the key is set, the fine-tuning service answers, what it allows for a base
model (LoRA ranks, batch sizes, sequence lengths), and your recent fine-tuning jobs. No key is printed.

    .venv/bin/python tools/check_together.py [BASE_MODEL]    # default: Qwen/Qwen3-32B
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from character.errors import CharacterError  # noqa: E402
from character.settings import load_env  # noqa: E402


def main() -> int:
    load_env()
    model = sys.argv[1] if len(sys.argv) > 1 else "Qwen/Qwen3-32B"
    try:
        from character.training.together import connect, reason
        client = connect()  # a clear one-line error without the SDK or TOGETHER_API_KEY
        print("TOGETHER_API_KEY: set")
        try:
            lim = client.fine_tuning.model_limits(model_name=model)
        except Exception as e:  # noqa: BLE001
            print(f"error: {model!r}: Together's fine-tuning service refused it ({reason(e)})", file=sys.stderr)
            return 1
        lo = lim.lora_training
        print(f"{model}: LoRA fine-tuning offered; max LoRA rank {lo.max_rank} (default {lo.default_rank}); "
              f"batch size {lo.min_batch_size}-{lo.max_batch_size} (DPO up to {lo.max_batch_size_dpo}); "
              f"max length SFT {lim.max_seq_length_sft}, DPO {lim.max_seq_length_dpo}; "
              f"learning rate {lim.min_learning_rate:g}-{lim.max_learning_rate:g}; "
              f"modules {', '.join(lo.target_modules)}")
        jobs = client.fine_tuning.list().data or []
        print(f"{len(jobs)} fine-tuning jobs on this account" + (":" if jobs else ""))
        for j in jobs[-10:]:
            print(f"  {j.id}  {j.status:12} {j.model or j.from_checkpoint}")
        return 0
    except CharacterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a network or service failure, reported in one line
        print(f"error: the Together service did not answer ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
