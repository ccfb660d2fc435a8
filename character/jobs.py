"""Detached jobs for the studio: `character ...` commands run as their own processes, recorded in a
SQLite table (`CHARACTER_HOME/jobs.db`), so they survive a page reload and a studio restart.

Each job runs under a small supervisor (`python -m character.jobs supervise ID`) in a new process
session: it starts the command, writes its output to `CHARACTER_HOME/jobs/<id>.log`, waits, and
records the exit status. Pages only read the table and the log. Cancel sends SIGTERM to the
supervisor, which interrupts the command with SIGINT (the CLI saves finished work and exits); resume starts the same command again (stages skip finished work and distillation
continues from its last saved batch). A job whose supervisor vanished (a reboot, a kill -9) is
marked `lost` on the next refresh.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .runs import character_home

SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, stage TEXT NOT NULL, command TEXT NOT NULL,
  pid INTEGER, status TEXT NOT NULL, returncode INTEGER, created REAL NOT NULL, started REAL,
  finished REAL, log TEXT NOT NULL)"""
ACTIVE = ("queued", "running")


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
    return con


def _row(r) -> Job:
    return Job(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10])


def get(job_id: int) -> Job | None:
    with _connect() as con:
        r = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _row(r) if r else None


def _update(job_id: int, **fields) -> None:
    with _connect() as con:
        con.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                    (*fields.values(), job_id))


def launch(run: str, stage: str, args: list[str], env: dict | None = None) -> Job:
    """Start `character ARGS` detached. Keys stay in the environment; the table and log hold none."""
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


def supervise(job_id: int) -> int:
    job = get(job_id)
    if job is None:
        return 2
    _update(job_id, status="running", started=time.time(), pid=os.getpid())
    with open(job.log, "a", encoding="utf-8") as log:
        log.write(f"$ character {' '.join(job.command)}\n")
        log.flush()
        child = subprocess.Popen([sys.executable, "-m", "character.cli", *job.command], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def stop(signum, frame):
            child.send_signal(signal.SIGINT)  # the CLI saves what is finished and exits
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
            _update(job_id, status="cancelled", returncode=child.wait(), finished=time.time())
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        rc = child.wait()
    _update(job_id, status="done" if rc == 0 else "failed", returncode=rc, finished=time.time())
    return rc


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (finished, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _refresh(j: Job) -> Job:
    if j.active and not _alive(j.pid) and time.time() - j.created > 5:
        j = get(j.id) or j  # the supervisor may have just written its final status
        if j.active:
            _update(j.id, status="lost", finished=time.time())
            j.status = "lost"
    return j


def jobs(run: str | None = None, limit: int = 50) -> list[Job]:
    """Newest first; running jobs whose supervisor is gone are marked lost."""
    with _connect() as con:
        q = "SELECT * FROM jobs" + (" WHERE run = ?" if run else "") + " ORDER BY id DESC LIMIT ?"
        rows = [_row(r) for r in con.execute(q, ((run, limit) if run else (limit,))).fetchall()]
    return [_refresh(j) for j in rows]


def cancel(job_id: int, grace: float = 40) -> None:
    """Stop a job: SIGTERM to its supervisor, which interrupts the command (finished work is saved)."""
    job = get(job_id)
    if not (job and job.active and job.pid):
        return
    try:
        os.kill(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + grace
    while time.time() < deadline and _alive(job.pid):
        time.sleep(0.2)
    job = get(job_id)
    if job and job.active:  # stopped before its supervisor could record it
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
