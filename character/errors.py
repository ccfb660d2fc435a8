"""Error types. The CLI prints a `CharacterError` as one line and exits non-zero (no traceback)."""


class CharacterError(Exception):
    """A user-facing error: the message names the field, the value and the fix."""


class ValidationError(CharacterError):
    """A user file or config value is invalid."""


class ModelSpecError(CharacterError):
    """A `provider/model` string names an unknown provider or a model that cannot be loaded."""


class MissingDependencyError(CharacterError):
    """An optional extra is not installed; the message says which `pip install` to run."""


class MissingKeyError(CharacterError):
    """An API key the chosen backend needs is not set."""


class GenerationError(CharacterError):
    """A backend failed to produce an output after its retries (and fallback, if any)."""


def field_error(field: str, value, fix: str) -> ValidationError:
    """One-line message in the house format: `field=value: fix`."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValidationError(f"{field}={shown}: {fix}")


class RunBusyError(CharacterError):
    """Another process holds the run's lock (one writer per run)."""


class StaleStageError(CharacterError):
    """A finished (or partial) stage was made with other settings or other inputs than the recipe asks for."""


class StageError(CharacterError):
    """A stage failed; its status.json records the message (and error.log the details)."""
