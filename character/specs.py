"""Model specs: `provider/model` strings naming a backend and a model (no imports above errors)."""

from __future__ import annotations

from .errors import ModelSpecError

PROVIDERS = ("embedded", "hf", "openai", "vllm", "tinker")
SPEC_HELP = "use embedded, hf/<id-or-path>, openai/<model>, vllm/<model> or tinker/<model>"


def parse_spec(spec: str) -> tuple[str, str]:
    """`provider/model` -> (provider, model). `embedded` has no model part."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model={spec!r}: empty model spec; {SPEC_HELP}")
    spec = spec.strip()
    if spec == "embedded":
        return "embedded", ""
    provider, sep, model = spec.partition("/")
    if provider not in PROVIDERS or not sep or not model:
        raise ModelSpecError(f"model={spec!r}: unknown model spec; {SPEC_HELP}")
    return provider, model
