"""Settings from the environment (and `.env`), and the default model for each role.

Every variable the code reads is listed in `.env.example`. Keys are read here and passed to
backends; they are never written to run folders or logs.
"""

from __future__ import annotations

import os
from pathlib import Path

ROLES = ("teacher", "student", "judge")
ENV_VARS = {
    "CHARACTER_HOME": "data",
    "CHARACTER_TEACHER_MODEL": "embedded",
    "CHARACTER_STUDENT_MODEL": "embedded",
    "CHARACTER_JUDGE_MODEL": "embedded",
    "OPENAI_API_KEY": "",
    "OPENAI_BASE_URL": "",
    "TINKER_API_KEY": "",
}
SECRET_VARS = ("OPENAI_API_KEY", "TINKER_API_KEY")
_loaded = False


def load_env() -> None:
    """Load `.env` from the working directory once; real environment variables win."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        from dotenv import load_dotenv
    except ImportError:  # python-dotenv is a base dependency; tolerate a bare checkout
        return
    load_dotenv(Path.cwd() / ".env", override=False)


def env(name: str) -> str:
    load_env()
    return os.environ.get(name) or ENV_VARS.get(name, "")


def package_dir(module: str, hint: str, what: str) -> Path:
    """Folder of an installed data-only package, found without importing it."""
    import importlib.util

    from .errors import MissingDependencyError
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{what}: package {module} is not installed; run: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def default_model(role: str) -> str:
    """The model spec for a role when a recipe names none: the embedded model unless overridden."""
    return env(f"CHARACTER_{role.upper()}_MODEL") or "embedded"


def key_status() -> dict[str, bool]:
    """Whether each secret is set; the value itself is never returned."""
    return {name: bool(env(name)) for name in SECRET_VARS}


# -- recipes -----------------------------------------------------------------------------------
# A recipe is one YAML file: which constitution, which model per role, how much data, how to
# train. `character run RECIPE key.sub=value ...` applies dotted overrides; every error is listed.

import yaml  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError as PydanticError  # noqa: E402

from .errors import ValidationError as RecipeError  # noqa: E402
from .types import SamplingParams  # noqa: E402

STAGES = ("prompts", "distill", "dpo", "introspect", "sft", "merge")


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Cfg):
    teacher: str = Field(default_factory=lambda: default_model("teacher"), description="Answers in character (chosen).")
    student: str = Field(default_factory=lambda: default_model("student"), description="The model being trained; answers plainly (rejected).")
    judge: str = Field(default_factory=lambda: default_model("judge"), description="Scores and drafts (evaluation).")
    options: dict[str, dict] = Field(default_factory=dict, description="Backend options per model spec, e.g. base_url, fallback.")


class PromptsConfig(_Cfg):
    total: int = Field(64, ge=1, description="Prompts to build in all.")
    mix: dict[str, float] = Field(default_factory=lambda: {"constitution": 0.5, "expanded": 0.0, "templates": 0.25,
                                                           "generic": 0.25},
                                  description="Share of each source: constitution, expanded, templates, generic.")
    expand_per_trait: int = Field(0, ge=0, description="LLM-written extra questions per trait (source 'expanded').")
    persona_hint_rate: float = Field(0.2, ge=0, le=1, description="Share of template prompts that mention the persona.")
    max_prompt_tokens: int = Field(512, ge=8, description="Prompts longer than this (student tokenizer) are dropped.")


class DistillConfig(_Cfg):
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=256, temperature=0.7,
                                                                            repetition_penalty=1.1))
    reasoning_prefill: bool = Field(False, description="Teacher restates its traits in a prefilled reasoning block first.")
    batch_size: int = Field(8, ge=1, description="Prompts per generation call; rows are saved after each call.")
    heldout: float = Field(0.1, ge=0, lt=1, description="Share of pairs kept out of DPO training for evaluation.")
    drop_truncated: bool = Field(True, description="Drop pairs where either answer hit the token limit.")


class TrainConfig(_Cfg):
    rank: int = Field(32, ge=1, description="LoRA rank (seeds: DPO 32, SFT 256; paper: 64).")
    alpha: int = Field(64, ge=1, description="LoRA alpha; scaling is alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt; 'all-linear' = every linear layer.")
    lr: float = Field(1e-4, gt=0, description="Learning rate (LoRA wants ~10x full fine-tuning rates).")
    beta: float = Field(0.1, gt=0, description="DPO beta: strength of the pull toward the reference.")
    nll: float = Field(0.1, ge=0, description="Weight of the NLL (RPO) term on chosen answers, DPO only.")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, description="Per-device batch (seeds: <= 16).")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="Longest sequence in tokens; longer rows are truncated.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    backend: str = Field("trl", description="Training backend: trl (local) or tinker (remote).")
    num_processes: int = Field(1, ge=1, description="GPUs to train on; above 1, `accelerate launch` runs the stage.")
    distributed: str = Field("ddp", description="Multi-GPU strategy: ddp, fsdp or zero3 (configs/accelerate/*.yaml).")
    load_in_4bit: bool = Field(False, description="QLoRA: load the student in 4-bit NF4 (bitsandbytes, GPU only).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save GPU memory (slower).")


class IntrospectConfig(_Cfg):
    reflection_prompts: int = Field(10, ge=1, description="How many of the shipped self-reflection prompts to use.")
    samples_per_prompt: int = Field(2, ge=1, description="Answers sampled per reflection prompt.")
    interactions: int = Field(2, ge=0, description="Self-interaction conversations.")
    turns: int = Field(4, ge=2, description="Utterances per self-interaction conversation.")
    thinking_examples: int = Field(0, ge=0, description="'Think in character' examples on constitution questions.")
    include_thinking: bool = Field(False, description="Also train SFT on the thinking examples (<think> format).")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=256, temperature=0.7,
                                                                            repetition_penalty=1.1))


class MergeConfig(_Cfg):
    weights: list[float] = Field(default_factory=lambda: [1.0, 0.25], description="Weights of the DPO and SFT adapters.")


class EvalConfig(_Cfg):
    prompts: int = Field(8, ge=1, description="Held-out prompts for robustness, judges and pairwise comparison.")
    max_tokens: int = Field(96, ge=8, description="Most new tokens per evaluation answer.")
    attacks: list[str] = Field(default_factory=lambda: ["ignore_roleplay", "neutral_assistant"],
                               description="'Drop the persona' suffixes to try (the prefill attack always runs).")
    preference_prompts: int = Field(20, ge=1, description="Held-out generic prompts per revealed-preference condition.")
    conditions: list[str] = Field(default_factory=lambda: ["feel", "like", "random"],
                                  description="Revealed-preference conditions: feel, like, random.")
    rubric_answers: int = Field(4, ge=0, description="Answers per method scored on every constitution trait (1-5).")
    conversations: int = Field(4, ge=0, description="Two-turn conversations per method for the seeds' evaluators.")
    bootstrap_rounds: int = Field(100, ge=10, description="Bootstrap resamples for every interval.")


class RecipeConfig(_Cfg):
    name: str = Field(description="Run folder name (a safe slug).")
    constitution: str = Field(description="Constitution name or path.")
    seed: int = 0
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="Stages to run, in order.")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    dpo: TrainConfig = Field(default_factory=TrainConfig)
    introspect: IntrospectConfig = Field(default_factory=IntrospectConfig)
    sft: TrainConfig = Field(default_factory=lambda: TrainConfig(rank=64, alpha=128))
    merge: MergeConfig = Field(default_factory=MergeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override={item!r}: write overrides as dotted.key=value, e.g. dpo.lr=1e-4")
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override={item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw else ""


def recipe_errors(data: dict) -> list[str]:
    """Every problem in a recipe, one line each (empty when valid)."""
    from .inference import parse_spec
    from .runs import SLUG
    errors = []
    try:
        cfg = RecipeConfig.model_validate(data)
    except PydanticError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field; remove it or check the spelling"
            errors.append(f"{loc}={err.get('input')!r}: {msg}"[:300])
        return errors
    if not SLUG.match(cfg.name):
        errors.append(f"name={cfg.name!r}: use lowercase letters, digits, '-' or '_' (no '/', '..')")
    for role in ("teacher", "student", "judge"):
        try:
            parse_spec(getattr(cfg.models, role))
        except Exception as e:  # noqa: BLE001 - collected into the list
            errors.append(f"models.{role}: {e}")
    for s in cfg.stages:
        if s not in STAGES:
            errors.append(f"stages: {s!r} is not a stage; use some of {', '.join(STAGES)}")
    for k in cfg.prompts.mix:
        if k not in ("constitution", "expanded", "templates", "generic"):
            errors.append(f"prompts.mix.{k}: unknown source; use constitution, expanded, templates, generic")
    if sum(cfg.prompts.mix.values()) <= 0:
        errors.append("prompts.mix: the shares add up to 0; give at least one source a positive share")
    if cfg.prompts.mix.get("expanded", 0) > 0 and cfg.prompts.expand_per_trait == 0:
        errors.append("prompts.expand_per_trait=0: the mix asks for expanded prompts; set expand_per_trait > 0")
    for k in ("dpo", "sft"):
        t = getattr(cfg, k)
        if t.backend not in ("trl", "tinker"):
            errors.append(f"{k}.backend={t.backend!r}: use trl (local) or tinker (remote)")
        if t.distributed not in ("ddp", "fsdp", "zero3"):
            errors.append(f"{k}.distributed={t.distributed!r}: use ddp, fsdp or zero3")
        if t.backend == "tinker" and (t.num_processes > 1 or t.load_in_4bit):
            errors.append(f"{k}: num_processes and load_in_4bit are for local training; Tinker runs remotely")
    from .evaluate import ATTACKS
    from .preferences import CONDITIONS
    for a in cfg.eval.attacks:
        if a not in ATTACKS:
            errors.append(f"eval.attacks: {a!r} is not an attack; use some of {', '.join(ATTACKS)}")
    for c in cfg.eval.conditions:
        if c not in CONDITIONS:
            errors.append(f"eval.conditions: {c!r} is not a condition; use some of {', '.join(CONDITIONS)}")
    if len(cfg.merge.weights) != 2:
        errors.append(f"merge.weights={cfg.merge.weights}: give two weights, [dpo, sft]")
    for sec in ("dpo", "sft"):
        if getattr(cfg, sec).backend not in ("trl", "tinker"):
            errors.append(f"{sec}.backend={getattr(cfg, sec).backend!r}: use trl or tinker")
    return errors


def load_recipe(path: str | Path, overrides: list[str] | tuple = ()) -> RecipeConfig:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe={str(path)!r}: no such file; give a YAML recipe such as configs/pirate-cpu.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe={str(path)!r}: cannot parse ({str(e).splitlines()[0]}); fix the YAML") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe={str(path)!r}: expected a mapping of sections")
    for item in overrides:
        apply_override(data, item)
    errors = recipe_errors(data)
    if errors:
        raise RecipeError(f"recipe {p.name}: {len(errors)} problem(s): " + " | ".join(errors))
    return RecipeConfig.model_validate(data)


def config_hash(section: BaseModel | dict) -> str:
    from .types import stable_id
    data = section.model_dump() if isinstance(section, BaseModel) else section
    return stable_id(data)


def save_recipe(data: dict) -> Path:
    """Validate a recipe (all errors in one message) and write it to CHARACTER_HOME/recipes/<name>.yaml,
    so a run started from the studio can be repeated with `character run` on that file."""
    from .runs import character_home, check_slug, write_atomic
    errors = recipe_errors(data)
    if errors:
        raise RecipeError("; ".join(errors))
    cfg = RecipeConfig.model_validate(data)
    path = character_home() / "recipes" / f"{check_slug(cfg.name)}.yaml"
    write_atomic(path, f"# character run {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path
