"""Remote LoRA training on Together AI's fine-tuning service, with the same interface as trl.py.
Selected by `backend: together` in a recipe's dpo/sft section. Needs the extra `together` (the
official SDK) and TOGETHER_API_KEY; TOGETHER_BASE_URL points it elsewhere (the tests' fake server).

- Data: the stage's pairs in Together's preference format (`input.messages`, `preferred_output`,
  `non_preferred_output`: `distill.to_openai_dpo`), SFT examples as `{"messages": [...]}` with
  `train_on_inputs: "auto"`, so every assistant turn is trained on and no user turn. DPO's held-out
  pairs go up as the validation file; Together's eval numbers are the stage's held-out metrics.
- Job: `fine_tuning.create` with the recipe's LoRA rank/alpha/dropout/modules, lr, warmup, whole
  epochs, batch size and gradient accumulation, seed, and for DPO `dpo_beta` and `rpo_alpha` (our
  `nll`: the NLL term on chosen answers). SFT after DPO continues the DPO job (`from_checkpoint`),
  so its adapter holds DPO + SFT and the merge stage takes the DPO part back out (as with Tinker).
- One job per stage, whatever happens to our process: the upload's file id and the job id are
  written to <stage>/together.json the moment they exist, the create call is never retried blindly
  (a create whose answer was lost is found again by its training file), and a rerun polls the
  recorded job instead of starting a second one. Stopping our process leaves the job running.
- Polling: status, events and per-step metrics go to the stage's metrics.jsonl as they arrive,
  with a progress bar; a job that ends `error` or `cancelled` fails the stage with Together's reason.
- Result: the adapter archive (`fine_tuning.content(checkpoint="adapter")`, tar.zst or tar.gz) is
  unpacked with tarfile's "data" filter and checked as a PEFT LoRA adapter, then moved into
  <stage>/adapter in one rename, so merge, chat, evaluation and the studio use it as a local one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..distill import to_openai_dpo
from ..errors import CharacterError, MissingDependencyError, MissingKeyError
from ..runs import write_json
from ..settings import env
from ..specs import parse_spec
from ..types import PreferencePair, SFTExample

LogFn = Callable[[int, dict], None]
INSTALL = "pip install -e '.[together]'"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded model's name on the Hugging Face Hub
POLL_SECONDS = 15.0
ACTIVE = {"pending", "queued", "running", "compressing", "uploading"}  # anything else but completed is an end
POLL_FAILURES = 5  # consecutive failed polls (each after the SDK's own retries) before the stage gives up


def connect():
    """A `together.Together` client. One line, before any work, without the SDK or the key."""
    try:
        import together
    except ImportError:
        raise MissingDependencyError(f"dpo.backend/sft.backend 'together' needs the Together SDK; run: {INSTALL}") from None
    key = env("TOGETHER_API_KEY")
    if not key:
        raise MissingKeyError("TOGETHER_API_KEY is not set; the together backend needs it (put it in the environment "
                              "or .env; get one at https://api.together.ai/settings/api-keys)")
    return together.Together(api_key=key, base_url=env("TOGETHER_BASE_URL") or None)


def remote_model(spec: str) -> str:
    """The name Together knows the student by: its Hugging Face id."""
    provider, model = parse_spec(spec)
    if provider == "embedded":
        return EMBEDDED_ID
    if provider in ("hf", "openai") and not Path(model).exists():
        return model
    raise CharacterError(f"models.student={spec!r}: the together backend trains a model Together hosts; name it by "
                         "its Hugging Face id, e.g. hf/Qwen/Qwen3-8B (or openai/<id> when you also sample it there)")


class RemoteFailure(CharacterError):
    """The job ended badly on Together's side."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())[:400]


def poll_seconds() -> float:
    return float(os.environ.get("CHARACTER_TOGETHER_POLL") or POLL_SECONDS)


def reason(e: Exception) -> str:
    """The provider's own words for a failed call, in one line."""
    import together
    if isinstance(e, together.APIStatusError):
        body = e.body
        if isinstance(body, (str, bytes)):
            try:
                body = json.loads(body)
            except ValueError:
                body = {}
        body = body if isinstance(body, dict) else {}
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        return f"HTTP {e.status_code}: {one_line(msg or e.message)[:300]}"
    if isinstance(e, together.APIConnectionError):
        return f"could not reach Together ({type(e).__name__})"
    return one_line(str(e))[:300] if str(e) else type(e).__name__


# -- the record of what exists remotely ---------------------------------------------------------

def _record(out_dir: Path) -> dict:
    path = out_dir / "together.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(out_dir: Path, rec: dict) -> dict:
    write_json(out_dir / "together.json", rec)
    return rec


def _write_rows(path: Path, rows: list[dict]) -> str:
    """Write a data file; returns its content hash (the same data is never uploaded twice)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_model(client, base: str, label: str = "models.student") -> None:
    """Together's limits for the base model: an unknown model or a refused key stops here, in one line
    (before any upload: the SDK words a 401 on upload as a billing problem)."""
    try:
        client.fine_tuning.model_limits(model_name=base)
    except Exception as e:  # noqa: BLE001
        raise CharacterError(f"{label}={base!r}: Together's fine-tuning service refused it ({reason(e)})") from None


def _refused(e: Exception) -> bool:
    """A 4xx other than a timeout/conflict/rate limit: the job was certainly not made."""
    import together
    return isinstance(e, together.APIStatusError) and 400 <= e.status_code < 500 and e.status_code not in (408, 409, 429)


def _upload(client, path: Path, what: str) -> str:
    try:
        return client.files.upload(file=path, purpose="fine-tune", check=True).id
    except Exception as e:  # noqa: BLE001 - the SDK's own check or the service refused the file
        raise CharacterError(f"{what}: Together refused the upload of {path.name} ({reason(e)})") from None


def _find(client, training_file: str, suffix: str, kind: str):
    """The job made from this training file under this request's tag (the suffix carries the request
    key), if a create reached the service but its answer did not reach us. Raises when the list of jobs
    cannot be read: creating again then could make a second job."""
    try:
        jobs = client.fine_tuning.list().data or []
    except Exception as e:  # noqa: BLE001
        raise CharacterError(f"{kind}: an earlier create may have reached Together and its jobs cannot be listed "
                             f"({reason(e)}); run the stage again") from None
    mine = [j for j in jobs if j.training_file == training_file and suffix in (j.x_model_output_name or "")]
    return mine[-1] if mine else None


def _job(client, kind: str, request: dict, files: dict[str, Path], out_dir: Path) -> str:
    """The id of this stage's job: the recorded one, or a new one (uploads first, each recorded)."""
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    rec = _record(out_dir)
    if rec.get("request_key") != key:  # other settings or data: nothing recorded applies
        rec = _save(out_dir, {"request_key": key})
    if rec.get("job"):
        return rec["job"]
    for name, path in files.items():
        if not rec.get(name):
            rec = _save(out_dir, {**rec, name: _upload(client, path, kind)})
    body = {k: v for k, v in request.items() if k not in files}
    body.update({name: rec[name] for name in files})
    # the suffix names the run, the stage and this request, so a lost create can be told apart
    body["suffix"] = f"{out_dir.parent.name[:22]}-{out_dir.name}-{key[:8]}"
    if rec.get("creating"):  # an earlier create may have reached the service
        found = _find(client, rec["training_file"], body["suffix"], kind)
        if found:
            return _save(out_dir, {**rec, "job": found.id, "creating": False})["job"]
    _check_price(client, kind, body)
    rec = _save(out_dir, {**rec, "creating": True})
    try:
        job = client.with_options(max_retries=0).fine_tuning.create(**body)
    except ValueError as e:  # the SDK checks the request against the model's limits before sending it
        _save(out_dir, {**rec, "creating": False})
        raise CharacterError(f"{kind}: Together would refuse this job: {e} (change the {kind} section)") from None
    except Exception as e:  # noqa: BLE001
        if _refused(e):
            _save(out_dir, {**rec, "creating": False})
            raise CharacterError(f"{kind}: Together refused the job ({reason(e)})") from None
        found = _find(client, rec["training_file"], body["suffix"], kind)
        if found is None:
            raise CharacterError(f"{kind}: Together did not create the job ({reason(e)}); run again to retry") from None
        job = found
    return _save(out_dir, {**rec, "job": job.id, "creating": False})["job"]


def _check_price(client, kind: str, body: dict) -> None:
    """Together's price estimate, printed; a job the account cannot pay for stops here in one line."""
    method = ({"method": "dpo"} if body.get("training_method") == "dpo"
              else {"method": "sft", "train_on_inputs": body.get("train_on_inputs", "auto")})
    ask = {"training_file": body["training_file"], "n_epochs": body.get("n_epochs", 1), "training_method": method,
           **{k: body[k] for k in ("model", "from_checkpoint", "validation_file", "n_evals") if body.get(k)}}
    try:
        est = client.fine_tuning.estimate_price(**ask)
    except Exception:  # noqa: BLE001 - an estimate is advice; the create call decides
        return
    if getattr(est, "estimation_available", False):
        price = getattr(est, "estimated_total_price", None) or 0.0
        tqdm.write(f"[{kind}] Together estimates ${price:.2f} for this job")
        if getattr(est, "allowed_to_proceed", True) is False:
            raise CharacterError(f"{kind}: Together says this job (estimated ${price:.2f}) exceeds the account's funds "
                                 "or limit; add credit at https://api.together.ai/settings/billing, then run again")


# -- polling ------------------------------------------------------------------------------------

def _failure(client, job) -> str:
    """Why a job ended badly, in Together's words: its last error event, else its status."""
    try:
        events = client.fine_tuning.list_events(job.id).data or []
    except Exception:  # noqa: BLE001
        events = []
    errors = [e for e in events if e.level == "error" or e.type in ("job_error", "billing_limit")]
    stops = [e for e in events if e.type in ("job_stopped", "cancel_requested")]
    return (errors or stops)[-1].message if (errors or stops) else f"status {job.status}"


def poll(client, job_id: str, kind: str, log: LogFn) -> tuple[object, list[dict]]:
    """Wait for the job; events and metrics go to `log` as they arrive. Returns the finished job and
    the metric rows (step and values as Together reports them)."""
    n_events = n_metrics = 0
    rows: list[dict] = []
    step = 0
    bar = tqdm(desc=f"{kind} (together {job_id})", unit="step")
    failures = 0
    try:
        while True:
            try:
                job = client.fine_tuning.retrieve(job_id)
                events = client.fine_tuning.list_events(job_id).data or []
                metrics = client.fine_tuning.list_metrics(job_id).metrics or []
                failures = 0
            except Exception as e:  # noqa: BLE001 - the SDK already retried; the job goes on without us
                failures += 1
                if failures >= POLL_FAILURES:
                    raise CharacterError(f"{kind}: lost contact with Together while waiting for job {job_id} "
                                         f"({reason(e)}); run the stage again to resume waiting for the same job") from None
                time.sleep(poll_seconds() * 2 ** failures)
                continue
            for ev in events[n_events:]:
                if ev.total_steps:
                    bar.total = ev.total_steps
                step = ev.step or step
                log(step, {"event": ev.type, "message": ev.message, "status": job.status})
            n_events = len(events)
            for row in metrics[n_metrics:]:
                step = int(row.get("global_step", row.get("step", step)))
                rows.append({"step": step, **{k: v for k, v in row.items() if k not in ("global_step", "step")}})
                log(step, {k: v for k, v in rows[-1].items() if k != "step"})
                bar.update(max(0, step - bar.n))
            n_metrics = len(metrics)
            bar.set_postfix_str(job.status)
            if job.status == "completed":
                return job, rows
            if job.status not in ACTIVE:
                raise RemoteFailure(f"{kind}: the Together job {job_id} ended {job.status}: "
                                    f"{one_line(_failure(client, job))}; run the stage again to start a new job")
            time.sleep(poll_seconds())
    finally:
        bar.close()


# -- the adapter --------------------------------------------------------------------------------

def _unpack(archive: Path, dest: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise CharacterError("unpacking Together's adapter safely needs tarfile's extraction filters "
                             "(Python 3.10.12, 3.11.4 or newer); upgrade Python")
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    elif magic == b"\x28\xb5\x2f\xfd":
        import zstandard
        with open(archive, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as raw, \
                tarfile.open(fileobj=raw, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    else:
        raise CharacterError(f"{archive.name}: Together's download is neither tar.gz nor tar.zst (starts {magic!r})")


def download_adapter(client, job_id: str, out: Path, rank: int) -> Path:
    """Fetch the job's LoRA adapter into `out` as a PEFT adapter; nothing is left half-written."""
    for stale in out.parent.glob(".together-*"):  # left by a process killed while downloading
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=".together-"))
    try:
        archive = work / "adapter.tar"
        try:  # streamed to disk: a large model's adapter need not fit in memory
            with client.fine_tuning.with_streaming_response.content(ft_id=job_id, checkpoint="adapter") as r:
                r.stream_to_file(archive)
        except Exception as e:  # noqa: BLE001
            raise CharacterError(f"the adapter of Together job {job_id} could not be downloaded ({reason(e)}); "
                                 "run the stage again to retry") from None
        _unpack(archive, work / "files")
        found = sorted(p.parent for p in (work / "files").rglob("adapter_config.json"))
        if not found or not (found[0] / "adapter_model.safetensors").exists():
            raise CharacterError(f"Together job {job_id}: the download holds no PEFT adapter "
                                 "(adapter_config.json + adapter_model.safetensors)")
        src = found[0]
        cfg = json.loads((src / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA" or int(cfg.get("r", rank)) != rank:
            raise CharacterError(f"Together job {job_id}: the adapter is {cfg.get('peft_type')} rank {cfg.get('r')}, "
                                 f"not the LoRA rank {rank} asked for")
        staged = work / "adapter"
        staged.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(src / name, staged / name)
        if out.exists():  # the old adapter stays in place until the new one is ready
            os.replace(out, work / "old-adapter")
        os.replace(staged, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the training entry points ------------------------------------------------------------------

def _lora(cfg) -> dict:
    modules = cfg.target_modules if isinstance(cfg.target_modules, str) else ",".join(cfg.target_modules)
    return {"lora": True, "lora_r": cfg.rank, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.dropout,
            "lora_trainable_modules": modules}


def _common(cfg, out_dir: Path) -> dict:
    return {"n_epochs": int(cfg.epochs), "batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "learning_rate": cfg.lr, "warmup_ratio": cfg.warmup_ratio, "max_seq_length": cfg.max_length,
            "random_seed": cfg.seed}


def _train(kind: str, request: dict, files: dict[str, Path], cfg, out_dir: Path, log: LogFn,
           continues: str | None) -> dict:
    client = connect()
    if request.get("model"):
        check_model(client, request["model"])
    else:
        check_model(client, request["from_checkpoint"], "sft.from_checkpoint (the DPO job)")
    job_id = _job(client, kind, request, files, out_dir)
    tqdm.write(f"[{kind}] Together job {job_id} (a rerun resumes it; `together fine-tuning cancel {job_id}` stops it)")
    try:
        job, history = poll(client, job_id, kind, log)
    except RemoteFailure:  # a rerun starts a new job from the same uploads; the failed one stays on record
        rec = _record(out_dir)
        _save(out_dir, {**rec, "job": None, "failed_jobs": rec.get("failed_jobs", []) + [job_id]})
        raise
    download_adapter(client, job_id, out_dir / "adapter", cfg.rank)
    rec = _save(out_dir, {**_record(out_dir), "status": job.status, "model_output_name": job.x_model_output_name,
                          "continues_dpo": continues is not None, "from_checkpoint": continues})
    losses = [r["loss"] for r in history if isinstance(r.get("loss"), (int, float))]
    steps = max([r["step"] for r in history if "loss" in r] or [0])
    k = max(1, len(losses) // 4)
    evals = [r for r in history if any(key.startswith("eval") for key in r)]
    if evals:
        _save(out_dir, {**rec, "eval": {key: v for key, v in evals[-1].items() if key.startswith("eval")}})
    return {"steps": steps, "loss_first": sum(losses[:k]) / k if losses else math.nan,
            "loss_last": sum(losses[-k:]) / k if losses else math.nan}


def train_dpo(pairs: list[PreferencePair], base: str, cfg, out_dir: Path, log_metrics: LogFn,
              heldout: list[PreferencePair] = ()) -> dict:
    files = {"training_file": out_dir / "together_train.jsonl"}
    digest = {"training_file": _write_rows(files["training_file"], [to_openai_dpo(p) for p in pairs])}
    request = {"model": base, "training_method": "dpo", "dpo_beta": cfg.beta,
               "rpo_alpha": cfg.nll if cfg.nll > 0 else None, **_lora(cfg), **_common(cfg, out_dir)}
    if heldout:
        files["validation_file"] = out_dir / "together_validation.jsonl"
        digest["validation_file"] = _write_rows(files["validation_file"], [to_openai_dpo(p) for p in heldout])
        request["n_evals"] = 1
    return _train("dpo", {**request, **digest}, files, cfg, out_dir, log_metrics, None)


def train_sft(examples: list[SFTExample], base: str, cfg, out_dir: Path, log_metrics: LogFn,
              init_adapters: list[str] = ()) -> dict:
    files = {"training_file": out_dir / "together_train.jsonl"}
    digest = _write_rows(files["training_file"], [{"messages": [m.model_dump() for m in ex.messages]}
                                                  for ex in examples])
    dpo_job = _dpo_job(init_adapters)
    request = {"training_method": "sft", "train_on_inputs": "auto", **_lora(cfg), **_common(cfg, out_dir),
               "training_file": digest}
    if dpo_job:  # continue the DPO adapter (Together takes a model or a checkpoint, not both)
        request["from_checkpoint"] = dpo_job
    else:
        request["model"] = base
    return _train("sft", request, files, cfg, out_dir, log_metrics, dpo_job)


def _dpo_job(init_adapters) -> str | None:
    for a in init_adapters:
        rec = Path(a).parent / "together.json"
        if rec.exists():
            return json.loads(rec.read_text()).get("job")
    return None


def preference_metrics(base: str, adapter: str, pairs: list[PreferencePair], beta: float,
                       init_adapters: list[str] = ()) -> dict:
    """The held-out check: Together's own evaluation of the held-out pairs (the validation file),
    as it reports it. Nothing is loaded locally (a large base may not fit here)."""
    if not pairs:
        return {}
    ev = _record(Path(adapter).parent).get("eval", {})
    return {"heldout_pairs": len(pairs), **{f"together_{k}": float(v) for k, v in ev.items()}}
