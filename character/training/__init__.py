"""Training backends behind one interface:

    train_dpo(pairs, base, cfg, out_dir, log_metrics) -> dict of final metrics
    train_sft(examples, base, cfg, out_dir, log_metrics, init_adapters) -> dict of final metrics

`log_metrics(step, dict)` receives per-step numbers; backends know nothing about run files.
Local: trl.py (TRL + PEFT). Remote: tinker.py (Tinker SDK), together.py (Together's fine-tuning API). Each also offers
preference_metrics(base, adapter, heldout_pairs, beta) for the held-out check after DPO.
"""

from __future__ import annotations

from ..errors import CharacterError


def get_trainer(name: str):
    if name == "trl":
        from . import trl
        return trl
    if name == "tinker":
        from . import tinker
        return tinker
    if name == "together":
        from . import together
        return together
    raise CharacterError(f"backend={name!r}: unknown training backend; use trl (local), tinker or together (remote)")
