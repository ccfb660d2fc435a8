"""Detached jobs for the studio: `character ...` commands run as their own processes, recorded in a
SQLite table (`CHARACTER_HOME/jobs.db`), so they survive a page reload and a studio restart.

Each job runs under a small supervisor (`python -m character.jobs supervise ID`) in a new process
session: it starts the command in a process group of its own, writes its output to
`CHARACTER_HOME/jobs/<id>.log`, waits, and records the exit status. Pages only read the table and
the log. Cancel sends SIGTERM to the supervisor, which interrupts the command with SIGINT (the CLI
records `stopped` and exits), kills what is left of its process group after STOP_GRACE seconds,
and records `cancelled` itself. Resume starts the same command again (stages skip finished work
and distillation continues from its last saved batch). A command whose supervisor dies gets
SIGTERM from the kernel (PR_SET_PDEATHSIG); a job whose supervisor vanished is marked `lost` on
the next refresh, and its command, if still there, is stopped. Pids are recorded with their
process start time and boot id, so a reused pid is never taken for the job nor signalled.
One active job per run: `launch` refuses a second (and the run lock would stop it anyway).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CharacterError
from .runs import character_home
from .settings import redact_args

SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, stage TEXT NOT NULL, command TEXT NOT NULL,
  pid INTEGER, status TEXT NOT NULL, returncode INTEGER, created REAL NOT NULL, started REAL,
  finished REAL, log TEXT NOT NULL, pid_start TEXT, child_pid INTEGER, child_start TEXT)"""
ADDED = (("pid_start", "TEXT"), ("child_pid", "INTEGER"), ("child_start", "TEXT"))  # tables made before them
ACTIVE = ("queued", "running")
SHARED_STAGES = ("draft", "preview", "export", "report")  # jobs that only read a run (or write elsewhere)
STOP_GRACE = 5.0  # seconds the command gets to save and exit after SIGINT before its group is killed


@dataclass
class Job:
    id: int
    run: str
    stage: str
    command: list[str]
    pid: int | None
    status: str
    returncode: int | None
    created: float
    started: float | None
    finished: float | None
    log: str
    pid_start: str | None = None
    child_pid: int | None = None
    child_start: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def db_path() -> Path:
    return character_home() / "jobs.db"


def _connect() -> sqlite3.Connection:
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    con.execute(SCHEMA)
    have = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
    for name, kind in ADDED:
        if name not in have:
            con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    return con


def _row(r) -> Job:
    return Job(r[0], r[1], r[2], json.loads(r[3]), *r[4:14])


def get(job_id: int) -> Job | None:
    with _connect() as con:
        r = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _row(r) if r else None


def _update(job_id: int, **fields) -> None:
    with _connect() as con:
        con.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                    (*fields.values(), job_id))


def active_job(run: str) -> Job | None:
    """The job now working on `run`, if any."""
    return next((j for j in jobs(run) if j.active), None)


def launch(run: str, stage: str, args: list[str], env: dict | None = None) -> Job:
    """Start `character ARGS` detached. Keys stay in the environment; the table and log hold none.
    A job that writes into run `run` is refused while another job works on it."""
    if redact_args(args) != args:
        raise CharacterError("command: holds a literal key; name its environment variable instead "
                             "(e.g. api_key=${MY_API_KEY}) so the jobs table and logs never hold it")
    busy = active_job(run) if stage not in SHARED_STAGES else None
    if busy:
        raise CharacterError(f"run={run!r}: job {busy.id} ({busy.stage}) is still working on it; wait for it or "
                             "cancel it first")
    logs = character_home() / "jobs"
    logs.mkdir(parents=True, exist_ok=True)
    with _connect() as con:
        cur = con.execute("INSERT INTO jobs (run, stage, command, status, created, log) VALUES (?, ?, ?, ?, ?, ?)",
                          (run, stage, json.dumps(args), "queued", time.time(), ""))
        job_id = cur.lastrowid
        con.execute("UPDATE jobs SET log = ? WHERE id = ?", (str(logs / f"{job_id}.log"), job_id))
    proc = subprocess.Popen([sys.executable, "-m", "character.jobs", "supervise", str(job_id)],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    _update(job_id, pid=proc.pid)
    return get(job_id)  # type: ignore[return-value]


def _die_with_parent() -> None:
    """In the command's process, before exec: SIGTERM when the supervisor dies (Linux)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int | None, sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def supervise(job_id: int) -> int:
    job = get(job_id)
    if job is None:
        return 2
    stop_at: list[float] = []
    child: subprocess.Popen | None = None

    def stop(signum, frame):  # installed before the command starts; only flags and forwards
        if not stop_at:
            stop_at.append(time.time())
            if child is not None:
                _kill_group(child.pid, signal.SIGINT)  # the CLI records `stopped` and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _update(job_id, status="running", started=time.time(), pid=os.getpid(), pid_start=start_time(os.getpid()))
    with open(job.log, "a", encoding="utf-8") as log:
        log.write(f"$ character {' '.join(redact_args(job.command))}\n")
        log.flush()
        child = subprocess.Popen([sys.executable, "-m", "character.cli", *job.command], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_die_with_parent,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", "CHARACTER_JOB_ID": str(job_id)})
        _update(job_id, child_pid=child.pid, child_start=start_time(child.pid))
        if stop_at:  # cancelled while the command was starting
            _kill_group(child.pid, signal.SIGINT)
        while True:
            try:
                rc = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop_at and time.time() - stop_at[0] > STOP_GRACE:
                    _kill_group(child.pid, signal.SIGKILL)
        _kill_group(child.pid, signal.SIGKILL)  # anything the command left in its group (e.g. launcher workers)
        if stop_at:
            log.write(f"\ncancelled (exit {rc})\n")
    _update(job_id, status="cancelled" if stop_at else "done" if rc == 0 else "failed", returncode=rc,
            finished=time.time())
    return rc


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) with the boot id: a pid with another start
    time, or from another boot, is another process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of stat; [0] here is field 3


def _alive(pid: int | None, started: str | None = None) -> bool:
    """Whether `pid` runs and is the process recorded (same start time, when one was recorded)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie (finished, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(") ", 1)[-1][:1] == "Z":
                return False
    except OSError:
        return True  # no /proc: trust kill(0)
    return started is None or start_time(pid) == started


def _refresh(j: Job) -> Job:
    if j.active and not _alive(j.pid, j.pid_start) and time.time() - j.created > 5:
        j = get(j.id) or j  # the supervisor may have just written its final status
        if j.active:
            if _alive(j.child_pid, j.child_start):  # an orphaned command: stop it before anyone resumes
                _kill_group(j.child_pid, signal.SIGKILL)
            _update(j.id, status="lost", finished=time.time())
            j.status = "lost"
    return j


def jobs(run: str | None = None, limit: int = 50) -> list[Job]:
    """Newest first; running jobs whose supervisor is gone are marked lost."""
    with _connect() as con:
        q = "SELECT * FROM jobs" + (" WHERE run = ?" if run else "") + " ORDER BY id DESC LIMIT ?"
        rows = [_row(r) for r in con.execute(q, ((run, limit) if run else (limit,))).fetchall()]
    return [_refresh(j) for j in rows]


def cancel(job_id: int, grace: float = STOP_GRACE + 4) -> None:
    """Stop a job: SIGTERM to its supervisor, which interrupts the command (finished work is saved)
    and records `cancelled`. Only the recorded process is ever signalled (pid + start time)."""
    job = get(job_id)
    if not (job and job.active and job.pid):
        return
    if _alive(job.pid, job.pid_start):
        os.kill(job.pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and _alive(job.pid, job.pid_start):
        time.sleep(0.1)
    job = get(job_id)
    if job and job.active:  # the supervisor did not finish in time (or was gone): stop what is left
        if _alive(job.pid, job.pid_start):
            os.kill(job.pid, signal.SIGKILL)
        if _alive(job.child_pid, job.child_start):
            _kill_group(job.child_pid, signal.SIGKILL)
        _update(job_id, status="cancelled", finished=time.time())


def resume(job_id: int) -> Job:
    job = get(job_id)
    if job is None:
        raise KeyError(job_id)
    return launch(job.run, job.stage, job.command)


def tail(job: Job, lines: int = 40) -> str:
    """The end of the job's log, progress-bar redraws folded to their last state."""
    try:
        text = Path(job.log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    out = [line.split("\r")[-1] for line in text.splitlines()]
    return "\n".join(out[-lines:])


def wait(job_id: int, timeout: float = 600) -> Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = get(job_id)
        job = _refresh(job) if job else None
        if job and not job.active:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still running after {timeout:.0f}s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(int(sys.argv[2])))
    print("usage: python -m character.jobs supervise JOB_ID", file=sys.stderr)
    sys.exit(2)
