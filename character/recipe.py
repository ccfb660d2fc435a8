"""The recipe: one YAML file saying which constitution, which model per role, how much data and how to train
and evaluate. The schema below validates it and lists every problem once, one line each; closed choices are
`Literal` types. `character run RECIPE key.sub=value ...` applies dotted overrides.

The schema imports only the layers below it (errors, specs, types, settings, runs); the owners of the closed
choices (prompts.SOURCES, evaluate.ATTACKS, preferences.CONDITIONS) are checked against these Literals in
tests/test_configs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticError

from .errors import CharacterError
from .errors import ValidationError as RecipeError
from .runs import SLUG, character_home, check_slug, write_atomic
from .settings import ENV_REF, default_model, is_secret_option, redact_options
from .specs import SPEC_HELP, parse_spec
from .types import SamplingParams, stable_id

STAGES = ("prompts", "distill", "dpo", "introspect", "sft", "merge")
# Closed choices, spelled once here (see the module's docstring).
Stage = Literal["prompts", "distill", "dpo", "introspect", "sft", "merge"]
Source = Literal["constitution", "expanded", "templates", "generic"]
Attack = Literal["ignore_roleplay", "neutral_assistant", "as_you_normally_would", "no_style", "professional",
                 "be_yourself", "system_override", "brief_plain"]
Condition = Literal["feel", "like", "random"]
JudgeCriterion = Literal["preferences", "character", "coherence", "rubric", "evaluators"]


def known_spec(spec: str, where: str = "") -> str:
    """A `provider/model` spec the backends know, or a validation message naming it."""
    try:
        parse_spec(spec)
    except CharacterError:
        shown = f" {spec!r}" if where else ""
        raise ValueError(f"{where}unknown model spec{shown}; {SPEC_HELP}") from None
    return spec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Cfg):
    teacher: str = Field(default_factory=lambda: default_model("teacher"), description="Answers in character (chosen).")
    student: str = Field(default_factory=lambda: default_model("student"), description="The model being trained; answers plainly (rejected).")
    judge: str = Field(default_factory=lambda: default_model("judge"), description="Scores and drafts (evaluation).")
    options: dict[str, dict] = Field(default_factory=dict, description="Backend options per model spec, e.g. base_url, fallback.")

    @field_validator("options")
    @classmethod
    def _no_literal_keys(cls, v: dict) -> dict:
        for spec, opts in v.items():
            for k, value in (opts or {}).items():
                if is_secret_option(k) and not (isinstance(value, str) and ENV_REF.match(value.strip())):
                    raise ValueError(f"{spec}.{k}: a literal key; write it as ${{VARIABLE}} and set the variable in "
                                     "the environment or .env (keys are never written to run folders)")
        return v

    @field_validator("teacher", "student", "judge")
    @classmethod
    def _spec(cls, v: str) -> str:
        return known_spec(v)


class PromptsConfig(_Cfg):
    total: int = Field(64, ge=1, description="Prompts to build in all.")
    mix: dict[Source, float] = Field(default_factory=lambda: {"constitution": 0.5, "expanded": 0.0, "templates": 0.25,
                                                           "generic": 0.25},
                                  description="Share of each source: constitution, expanded, templates, generic.")
    expand_per_trait: int = Field(0, ge=0, description="LLM-written extra questions per trait (source 'expanded').")
    persona_hint_rate: float = Field(0.2, ge=0, le=1, description="Share of template prompts that mention the persona.")
    max_prompt_tokens: int = Field(512, ge=8, description="Prompts longer than this (student tokenizer) are dropped.")

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict) -> dict:
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("the shares must be 0 or more and add up to more than 0; give a source a positive share")
        return v

    @model_validator(mode="after")
    def _expanded(self) -> "PromptsConfig":
        if self.mix.get("expanded", 0) > 0 and self.expand_per_trait == 0:
            raise ValueError("expand_per_trait=0: the mix asks for expanded prompts; set expand_per_trait > 0")
        return self


class DistillConfig(_Cfg):
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=256, temperature=0.7,
                                                                            repetition_penalty=1.1))
    reasoning_prefill: bool = Field(False, description="Teacher restates its traits in a prefilled reasoning block first.")
    batch_size: int = Field(8, ge=1, description="Prompts per generation call; rows are saved after each call.")
    heldout: float = Field(0.1, ge=0, lt=1, description="Share of pairs kept out of DPO training for evaluation.")
    drop_truncated: bool = Field(True, description="Drop pairs where either answer hit the token limit.")
    teacher_prompt: Literal["full", "traits-last", "short"] = Field(
        "full", description="The teacher's system prompt: the full rendered constitution, the same with the "
        "directives last, or the constitution's short system_prompt alone.")
    voice_examples: bool = Field(True, description="Show the constitution's example exchanges to the teacher as "
                                 "earlier turns (few-shot), when it has any.")
    guidance: float = Field(1.0, ge=0, le=10, description="Classifier-free guidance scale between the teacher with "
                            "and without its persona prompt (1: off). Local teachers (embedded, hf) only.")
    best_of: int = Field(1, ge=1, le=16, description="Teacher answers sampled per prompt; the one with the highest "
                         "persona score is kept. Needs a student model that reads log-probabilities.")
    persona_filter: bool = Field(False, description="Drop pairs whose chosen answer's persona score is not above "
                                 "the rejected answer's. Needs a student model that reads log-probabilities.")


ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}


def tinker_layers(target_modules: str | list[str]) -> dict[str, bool]:
    """Our target_modules as Tinker's switches: all-linear, the four attention projections, the three
    MLP projections, or both sets; anything else cannot be expressed there."""
    if target_modules == "all-linear":
        return {"train_attn": True, "train_mlp": True}
    mods = set([target_modules] if isinstance(target_modules, str) else target_modules)
    if mods in (ATTENTION, MLP, ATTENTION | MLP):
        return {"train_attn": ATTENTION <= mods, "train_mlp": MLP <= mods}
    raise ValueError(f"target_modules={sorted(mods)}: Tinker trains whole layer kinds only; use all-linear, "
                     f"the attention projections {sorted(ATTENTION)}, the MLP projections {sorted(MLP)}, or both")


class TrainConfig(_Cfg):
    rank: int = Field(32, ge=1, description="LoRA rank (seeds: DPO 32, SFT 256; paper: 64).")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; scaling is alpha / rank (unset: 2 x rank). "
                              "Not for Tinker, whose adapters carry their own.")
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
    backend: Literal["trl", "tinker", "together"] = Field(
        "trl", description="Training backend: trl (local), tinker or together (remote).")
    num_processes: int = Field(1, ge=1, description="GPUs to train on; above 1, `accelerate launch` runs the stage.")
    distributed: Literal["ddp", "fsdp", "zero3"] = Field(
        "ddp", description="Multi-GPU strategy: ddp, fsdp or zero3 (configs/accelerate/*.yaml).")
    load_in_4bit: bool = Field(False, description="QLoRA: load the student in 4-bit NF4 (bitsandbytes, GPU only).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save GPU memory (slower).")
    extra_data: list[str] = Field(default_factory=list, description="More training rows: JSONL files of preference "
                                  "pairs (dpo) or SFT examples (sft), e.g. a behaviour evaluation's data/pairs.jsonl "
                                  "or data/sft.jsonl, added to the stage's own data (a relative path is read from "
                                  "the recipe's folder).")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Local training arithmetic: auto = bf16 mixed precision where the hardware has bf16 "
        "matrix instructions (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX), fp32 otherwise.")

    @model_validator(mode="after")
    def _remote(self) -> "TrainConfig":
        if self.backend == "trl":
            return self
        if self.precision != "auto":
            raise ValueError(f"precision={self.precision}: precision is for local training; "
                             f"{self.backend} picks its own; remove precision")
        if self.num_processes > 1 or self.load_in_4bit:
            where = {"tinker": "Tinker", "together": "Together"}[self.backend]
            raise ValueError(f"num_processes and load_in_4bit are for local training; {where} runs remotely")
        if self.backend == "together":
            # Together's job takes whole epochs (n_epochs: int); the rest maps onto its LoRA and DPO fields
            if self.epochs != int(self.epochs):
                raise ValueError(f"epochs={self.epochs}: Together trains whole epochs; use 1, 2, 3, ...")
            return self
        # Tinker's LoRA takes a rank and which layer kinds to train, nothing else (tinker-api reference §9)
        if self.alpha is not None:
            raise ValueError(f"alpha={self.alpha}: Tinker has no LoRA alpha setting (its adapters carry their own); "
                             "remove alpha for backend: tinker")
        if self.dropout:
            raise ValueError(f"dropout={self.dropout}: Tinker has no LoRA dropout; set dropout: 0")
        tinker_layers(self.target_modules)  # raises for a module list Tinker cannot express
        return self

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.rank


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
    weights: list[float] = Field(default_factory=lambda: [1.0, 0.25], min_length=2, max_length=2,
                                 description="Weights of the DPO and SFT adapters: [dpo, sft].")


class EvalConfig(_Cfg):
    prompts: int = Field(8, ge=1, description="Held-out prompts for robustness, judges and pairwise comparison.")
    max_tokens: int = Field(96, ge=8, description="Most new tokens per evaluation answer.")
    attacks: list[Attack] = Field(default_factory=lambda: ["ignore_roleplay", "neutral_assistant"],
                               description="'Drop the persona' suffixes to try (the prefill attack always runs).")
    preference_prompts: int = Field(20, ge=1, description="Held-out generic prompts per revealed-preference condition.")
    conditions: list[Condition] = Field(default_factory=lambda: ["feel", "like", "random"],
                                  description="Revealed-preference conditions: feel, like, random.")
    rubric_answers: int = Field(4, ge=0, description="Answers per method scored on every constitution trait (1-5).")
    conversations: int = Field(4, ge=0, description="Two-turn conversations per method for the seeds' evaluators.")
    bootstrap_rounds: int = Field(100, ge=10, description="Bootstrap resamples for every interval.")
    judges: dict[JudgeCriterion, str] = Field(
        default_factory=dict, description="A judge model per criterion (preferences, character, coherence, rubric, "
                                          "evaluators); the others use models.judge.")
    calibration_pairs: int = Field(12, ge=4, description="Known pairs per judge criterion for its calibration check.")
    min_trait_matches: int = Field(3, ge=1, description="Matches a trait needs (base and trained) to be listed "
                                                        "among the traits that moved.")
    finetuned_classifier: bool = Field(True, description="Also fine-tune the MiniLM encoder as a sequence "
                                                         "classifier (the paper's kind) and report it beside the "
                                                         "linear one.")
    retention_prompts: int = Field(24, ge=0, description="Instruction-following prompts with checkable constraints "
                                                         "(0 skips the retention section).")

    @field_validator("judges")
    @classmethod
    def _judge_specs(cls, v: dict) -> dict:
        for criterion, spec in v.items():
            known_spec(spec, f"{criterion}: ")
        return v


class RecipeConfig(_Cfg):
    name: str = Field(description="Run folder name (a safe slug).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError("use lowercase letters, digits, '-' or '_' (no '/', '..')")
        return v
    constitution: str = Field(description="Constitution name or path.")
    seed: int = 0
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), description="Stages to run, in order.")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    dpo: TrainConfig = Field(default_factory=TrainConfig)
    introspect: IntrospectConfig = Field(default_factory=IntrospectConfig)
    sft: TrainConfig = Field(default_factory=lambda: TrainConfig(rank=64))
    merge: MergeConfig = Field(default_factory=MergeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _guidance(self) -> "RecipeConfig":
        provider = self.models.teacher.split("/", 1)[0]
        if self.distill.guidance != 1.0 and provider not in ("embedded", "hf"):
            raise ValueError(f"distill.guidance={self.distill.guidance}: guidance runs two forward passes per token "
                             f"inside a local model; teacher {self.models.teacher!r} is remote. Use a local teacher "
                             "(embedded or hf/...) or set guidance: 1")
        if self.distill.guidance != 1.0 and self.distill.reasoning_prefill:
            raise ValueError(f"distill.guidance={self.distill.guidance}: guidance compares the teacher with the bare "
                             "request, which has no reasoning prefill to continue; set reasoning_prefill: false or "
                             "guidance: 1")
        d = self.distill
        if (d.best_of > 1 or d.persona_filter) and self.models.student.split("/", 1)[0] == "openai":
            raise ValueError(f"distill.best_of={d.best_of}, persona_filter={d.persona_filter}: both rank answers by "
                             f"persona score, which reads log-probabilities; student {self.models.student!r} "
                             "(chat completions) gives none. Use a local student (embedded, hf/..., vllm/...) or "
                             "set best_of: 1, persona_filter: false")
        return self

    @model_validator(mode="after")
    def _together_sft(self) -> "RecipeConfig":
        # SFT on Together continues the DPO job's weights (from_checkpoint); a local DPO adapter cannot be sent there
        if self.sft.backend == "together" and self.dpo.backend != "together" and "dpo" in self.stages:
            raise ValueError(f"sft.backend=together with dpo.backend={self.dpo.backend}: SFT on Together continues "
                             "the Together DPO job; set dpo.backend: together too, or train SFT locally (trl)")
        lora = ("rank", "lora_alpha", "target_modules", "dropout")
        if self.sft.backend == "together" and self.dpo.backend == "together" and (
                [getattr(self.sft, k) for k in lora] != [getattr(self.dpo, k) for k in lora]):
            raise ValueError(f"sft.rank={self.sft.rank}: SFT on Together continues the DPO adapter, which keeps its "
                             f"rank {self.dpo.rank}, alpha {self.dpo.lora_alpha}, target_modules and dropout; set the "
                             "sft section's to match")
        return self


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


def pydantic_problems(e: PydanticError, prefix: str = "") -> list[str]:
    """A pydantic error as one `field=value: problem` line per problem."""
    lines = []
    for err in e.errors():
        loc = prefix + ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check the spelling"
        value = err.get("input")
        line = (f"{loc}: {msg}" if isinstance(value, dict) else f"{loc}={value!r}: {msg}")[:300]
        if line not in lines:
            lines.append(line)
    return lines


def validated(model: type[BaseModel], data: dict, prefix: str = ""):
    """Validate one config section (e.g. command-line overrides of `eval`), one line per problem."""
    try:
        return model.model_validate(data)
    except PydanticError as e:
        raise RecipeError("; ".join(pydantic_problems(e, prefix))) from None


def recipe_errors(data: dict) -> list[str]:
    """Every problem in a recipe, one line each (empty when valid): the schema checks them all."""
    try:
        RecipeConfig.model_validate(data)
    except PydanticError as e:
        return pydantic_problems(e)
    return []


def read_yaml_mapping(path: str | Path, field: str, example: str, shape: str) -> dict:
    """A YAML file that must hold a mapping (a recipe, a behaviour config), or one line naming what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{field}={str(path)!r}: no such file; give {example}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{field}={str(path)!r}: cannot parse ({str(e).splitlines()[0]}); fix the YAML") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{field}={str(path)!r}: expected a mapping of {shape}")
    return data


def load_recipe(path: str | Path, overrides: list[str] | tuple = ()) -> RecipeConfig:
    p = Path(path)
    data = read_yaml_mapping(path, "recipe", "a YAML recipe such as configs/pirate-cpu.yaml", "sections")
    for item in overrides:
        apply_override(data, item)
    for kind in ("dpo", "sft"):  # training files named relative to the recipe, wherever the command runs
        section = data.get(kind)
        if isinstance(section, dict) and isinstance(section.get("extra_data"), list):
            section["extra_data"] = [str((p.parent / x).resolve()) if isinstance(x, str) and not Path(x).is_absolute()
                                     else x for x in section["extra_data"]]
    errors = recipe_errors(data)
    if errors:
        raise RecipeError(f"recipe {p.name}: {len(errors)} problem(s): " + " | ".join(errors))
    return RecipeConfig.model_validate(data)


def config_hash(section: BaseModel | dict) -> str:
    data = section.model_dump() if isinstance(section, BaseModel) else section
    return stable_id(data)


def recipe_of_run(rdir: Path) -> RecipeConfig:
    """The recipe a run was started with (runs/<run>/recipe.yaml, written by the pipeline), read in one place."""
    path = rdir / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(f"run={rdir.name!r}: no recipe.yaml there; start the run with `character run RECIPE`")
    try:
        return RecipeConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (PydanticError, yaml.YAMLError) as e:
        raise RecipeError(f"run={rdir.name!r}: its recipe.yaml does not validate ({str(e).splitlines()[0][:160]}); "
                          "run it again with `character run RECIPE`") from None


def public_recipe(cfg: RecipeConfig | dict) -> dict:
    """The recipe as it may be written to disk (run folders, saved recipes): no literal secrets."""
    data = cfg.model_dump() if isinstance(cfg, BaseModel) else dict(cfg)
    models = data.get("models")
    if isinstance(models, dict) and isinstance(models.get("options"), dict):
        data["models"] = {**models, "options": redact_options(models["options"])}
    return data


def save_recipe(data: dict) -> Path:
    """Validate a recipe (all errors in one message) and write it to CHARACTER_HOME/recipes/<name>.yaml,
    so a run started from the studio can be repeated with `character run` on that file."""
    errors = recipe_errors(data)
    if errors:
        raise RecipeError("; ".join(errors))
    cfg = RecipeConfig.model_validate(data)
    path = character_home() / "recipes" / f"{check_slug(cfg.name)}.yaml"
    write_atomic(path, f"# character run {path}\n" + yaml.safe_dump(public_recipe(data), sort_keys=False))
    return path
