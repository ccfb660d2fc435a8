"""Settings from the environment (and `.env`), the default model for each role, installed data packages,
and how keys are kept out of files.

Every variable the code reads is listed in `.env.example`. Keys are read here and passed to backends; recipes,
run folders, logs and the jobs table only ever hold a variable's name (`${MY_KEY}`).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from dotenv import load_dotenv

from .errors import MissingDependencyError

ROLES = ("teacher", "student", "judge")
ENV_VARS = {
    "CHARACTER_HOME": "data",
    "CHARACTER_TEACHER_MODEL": "embedded",
    "CHARACTER_STUDENT_MODEL": "embedded",
    "CHARACTER_JUDGE_MODEL": "embedded",
    "OPENAI_API_KEY": "",
    "OPENAI_BASE_URL": "",
    "TINKER_API_KEY": "",
    "TOGETHER_API_KEY": "",
    "TOGETHER_BASE_URL": "",
}
SECRET_VARS = ("OPENAI_API_KEY", "TINKER_API_KEY", "TOGETHER_API_KEY")
_loaded = False


def load_env() -> None:
    """Load `.env` from the working directory once; real environment variables win."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    load_dotenv(Path.cwd() / ".env", override=False)


def env(name: str) -> str:
    load_env()
    return os.environ.get(name) or ENV_VARS.get(name, "")


def package_dir(module: str, hint: str, what: str) -> Path:
    """Folder of an installed data-only package, found without importing it."""
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


# -- keys: only ever by variable name in files ----------------------------------------------------

SECRET_WORDS = ("key", "keys", "token", "secret", "secrets", "password", "passwd", "credential", "credentials")
ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


def is_secret_option(name: str) -> bool:
    """Backend options that hold credentials: api_key, apiKey, api_keys, hf_token, authToken,
    client_secret, password ... (but not max_tokens or token_budget)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_").split("_")
    last = words[-1]
    return (last in SECRET_WORDS or last.endswith(("key", "keys", "token", "secret", "password"))
            or any(w in ("apikey", "secret", "password") for w in words))


def resolve_option(name: str, value: object) -> object:
    """A secret option may name an environment variable (`${MY_KEY}` or `$MY_KEY`): read it here,
    at the last moment, so recipes and run folders only ever hold the variable's name."""
    if is_secret_option(name) and isinstance(value, str) and (m := ENV_REF.match(value.strip())):
        return env(m.group(1))
    return value


def redact_options(options: dict[str, dict]) -> dict[str, dict]:
    """Model options with literal secrets removed (references such as ${MY_KEY} are kept)."""
    return {spec: {k: v for k, v in opts.items()
                   if not is_secret_option(k) or (isinstance(v, str) and ENV_REF.match(v.strip()))}
            for spec, opts in options.items()}


def redact_args(args: list[str]) -> list[str]:
    """Command-line words with the values of secret overrides hidden (for the jobs table and logs)."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        last = key.rsplit(".", 1)[-1].lstrip("-")
        if sep and is_secret_option(last) and not ENV_REF.match(value.strip()):
            a = f"{key}=***"
        out.append(a)
    return out
