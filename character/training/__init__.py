"""Training backends behind one interface:

    train_dpo(pairs, base, cfg, out_dir, log_metrics) -> dict of final metrics
    train_sft(examples, base, cfg, out_dir, log_metrics, init_adapters) -> dict of final metrics

`log_metrics(step, dict)` receives per-step numbers; backends know nothing about run files.
Local: trl.py (TRL + PEFT). Remote: tinker.py (not built yet; see the README).
"""

from __future__ import annotations

from ..errors import CharacterError


def get_trainer(name: str):
    if name == "trl":
        from . import trl
        return trl
    raise CharacterError(f"backend={name!r}: the {name} training backend is not built yet; use backend: trl")
