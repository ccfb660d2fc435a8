"""Run folders and file I/O: the only module that knows where things live on disk.

Layout under CHARACTER_HOME (default ./data):
    models/<name>/                 cached model weights (the embedded model's safetensors copy)
    runs/<run>/recipe.yaml         the recipe the run was started with
    runs/<run>/<stage>/status.json one StageStatus per stage
    runs/<run>/<stage>/*.jsonl     the stage's records, appended and flushed as they complete
JSONL is appended line by line with a flush (a crash loses at most the line being written, and a
torn last line is cut off on the next open); whole files are written to a temp file and renamed.

One writer per run: every command that writes into `runs/<run>/` holds `run_lock(run_dir)`, an
exclusive `flock` on `runs/<run>/.lock` that the OS releases when the process dies. Readers never
take it; `lock_holder` tells them whether a writer is alive (a stage left `running` without one
was interrupted).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .errors import CharacterError, RunBusyError, StageError, field_error
from .types import Checkpoint, StageStatus

T = TypeVar("T", bound=BaseModel)

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_slug(value: str, field: str = "name") -> str:
    """Refuse anything path-like before a file is touched."""
    if not isinstance(value, str) or not SLUG.match(value):
        raise field_error(field, value, "use 1-64 lowercase letters, digits, '-' or '_' "
                          "starting with a letter or digit (no '/', '..', spaces)")
    return value


def character_home() -> Path:
    return Path(os.environ.get("CHARACTER_HOME") or "data").resolve()


def models_dir() -> Path:
    """Cached model weights; CHARACTER_MODELS moves them apart from runs (tests share one cache)."""
    return Path(os.environ.get("CHARACTER_MODELS") or character_home() / "models").resolve()


def runs_root() -> Path:
    return character_home() / "runs"


def run_dir(run: str) -> Path:
    return runs_root() / check_slug(run, "run")


def stage_dir(run: str | Path, stage: str) -> Path:
    base = run if isinstance(run, Path) else run_dir(run)
    return base / check_slug(stage, "stage")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: object) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a crash mid-write) so appends start on a clean line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


class JsonlWriter:
    """Append records one per line, flushed as each completes."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: BaseModel) -> None:
        self._f.write(record.model_dump_json() + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def why_invalid(e: ValueError) -> str:
    """The first problem pydantic found, with where it is ("metrics.loss: Input should be a valid number")."""
    if isinstance(e, PydanticValidationError) and e.errors():
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def iter_jsonl(path: Path, record_type: type[T]) -> Iterator[T]:
    """Yield records; a torn (unterminated) last line is skipped, any other bad line raises."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return  # torn tail from an interrupted write; the writer cuts it on next open
            if line.strip():
                try:
                    yield record_type.model_validate_json(line)
                except ValueError as e:
                    raise field_error(f"{path.name}:{lineno}", line.strip()[:60],
                                      f"not a valid {record_type.__name__} record ({why_invalid(e)})") from None


def read_jsonl(path: Path, record_type: type[T]) -> list[T]:
    return list(iter_jsonl(path, record_type))


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> None:
    write_atomic(path, "".join(r.model_dump_json() + "\n" for r in records))


def write_record(path: Path, record: BaseModel) -> None:
    """One typed record as a JSON file (status.json, checkpoint.json, profiles, splits...), written atomically."""
    write_atomic(path, record.model_dump_json(indent=2) + "\n")


def read_record(path: Path, record_type: type[T], fix: str = "delete it and run the same command again") -> T | None:
    """The record a `write_record` left at `path`, or None if none was written; a damaged file names itself, with
    `fix` (the default suits files rebuilt when missing, as status.json is: its stage runs again)."""
    if not path.exists():
        return None
    raw = path.read_bytes()
    try:
        return record_type.model_validate_json(raw)
    except ValueError as e:
        raise field_error(str(path), raw.decode("utf-8", "replace").strip()[:60],
                          f"not a valid {record_type.__name__} record ({why_invalid(e)}); {fix}") from None


def read_status(stage_path: Path) -> StageStatus | None:
    return read_record(stage_path / "status.json", StageStatus)


def read_checkpoint(stage_path: Path) -> Checkpoint | None:
    """A training stage's `checkpoint.json` (its adapter, data counts, settings and final metrics), if written."""
    return read_record(stage_path / "checkpoint.json", Checkpoint,
                       f"redo that training: character run RECIPE --restart {stage_path.name}")


def write_checkpoint(stage_path: Path, checkpoint: Checkpoint) -> None:
    write_record(stage_path / "checkpoint.json", checkpoint)


def write_status(stage_path: Path, status: StageStatus) -> None:
    write_record(stage_path / "status.json", status)


def start_status(stage_path: Path, stage: str, total: int | None, config_hash: str | None = None) -> StageStatus:
    """Mark a stage running. Provenance written before it started (settings, inputs: see
    pipeline.prepare_stage) is kept; `config_hash` replaces it only when given."""
    old = read_status(stage_path)
    keep = old.model_dump(include={"config_hash", "settings", "inputs"}) if old else {}
    if config_hash is not None:
        keep["config_hash"] = config_hash
    status = StageStatus(stage=stage, state="running", total=total, started=time.time(), writer=os.getpid(), **keep)
    write_status(stage_path, status)
    return status


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (f"{type(e).__name__}: {text}" if not isinstance(e, CharacterError) else text)[:300] or type(e).__name__


def end_status(stage_path: Path, stage: str, state: str, error: str | None = None) -> None:
    """Record how a stage ended when it did not end `done` itself (failed or stopped)."""
    old = read_status(stage_path) or StageStatus(stage=stage)
    write_status(stage_path, old.model_copy(update={"state": state, "error": error, "finished": time.time()}))


@contextlib.contextmanager
def recorded(stage_path: Path, stage: str):
    """Every way out of a stage is written down: an exception -> `failed` with its one-line message
    (and the traceback in error.log when it was not a user error), Ctrl-C or SIGTERM -> `stopped`."""
    try:
        yield
    except KeyboardInterrupt:
        end_status(stage_path, stage, "stopped", "interrupted (Ctrl-C or SIGTERM); run the same command to resume")
        raise
    except CharacterError as e:
        end_status(stage_path, stage, "failed", one_line(e))
        raise
    except Exception as e:
        msg = one_line(e)
        stage_path.mkdir(parents=True, exist_ok=True)
        write_atomic(stage_path / "error.log", traceback.format_exc())
        end_status(stage_path, stage, "failed", msg)
        raise StageError(f"stage {stage} failed: {msg} (traceback in {stage_path / 'error.log'})") from e


# -- one writer per run ----------------------------------------------------------------------------

_held: dict[Path, list] = {}  # lock path -> [fd, depth]: re-entrant within one process


def _holder_text() -> str:
    job = os.environ.get("CHARACTER_JOB_ID")
    return json.dumps({"pid": os.getpid(), "job": int(job) if job and job.isdigit() else None,
                       "since": time.time()})


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    job = f" (studio job {holder['job']})" if holder.get("job") else ""
    return f"pid {holder.get('pid')}{job}"


def _read_holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text() or "null")
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_lock(rdir: Path, wait: float = 1.0):
    """Hold the run's writer lock for the block. A second writer gets RunBusyError naming the
    holder and writes nothing. `wait` covers a reader's momentary probe (see lock_holder)."""
    path = (rdir / ".lock").resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    rdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.time() >= deadline:
                os.close(fd)
                raise RunBusyError(f"run={rdir.name!r}: another writer is working on it ({_describe(_read_holder(path))}); "
                                   "wait for it to finish or cancel it, then run again") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode(), 0)
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        del _held[path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_holder(rdir: Path) -> dict | None:
    """Who holds the run's writer lock ({'pid', 'job', 'since'}), or None when nobody does."""
    path = rdir / ".lock"
    if path.resolve() in _held:
        return json.loads(_holder_text())
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _read_holder(path) or {}
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None


def shown_state(rdir: Path, status: StageStatus) -> str:
    """A stage's state as a reader should show it: `running` only while its writer holds the run."""
    if status.state != "running":
        return status.state
    holder = lock_holder(rdir)
    if holder is None or (status.writer is not None and holder.get("pid") not in (None, status.writer)):
        return "interrupted"
    return "running"


def zip_folder(path: Path) -> bytes:
    """A folder as zip bytes (for downloads)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(path.parent))
    return buf.getvalue()
