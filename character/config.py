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


def default_model(role: str) -> str:
    """The model spec for a role when a recipe names none: the embedded model unless overridden."""
    return env(f"CHARACTER_{role.upper()}_MODEL") or "embedded"


def key_status() -> dict[str, bool]:
    """Whether each secret is set; the value itself is never returned."""
    return {name: bool(env(name)) for name in SECRET_VARS}
