"""A stand-in for Together AI's fine-tuning service on loopback, for the tests of the together
training backend. It speaks the HTTP the real `together` SDK sends (checked against together 3.1.1:
`files.upload`, `fine_tuning.create/retrieve/list/list_events/list_metrics/cancel/content`,
`model_limits`, `estimate_price`), checks the data formats Together documents, and moves a job
through Together's statuses one step per `retrieve`, so the client's polling drives it.

Knobs a test sets on the instance: `fail_at` (step at which the job ends `error` with `fail_message`),
`drop_create_answer` (make the job, then close the connection without answering), `ticks_per_step`.
The adapter a finished job offers comes from `adapter_factory(job) -> folder` (a real PEFT adapter).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

STATUSES = ["pending", "queued", "running", "compressing", "uploading", "completed"]


def _limits(model: str) -> dict:
    return {"model_name": model, "default_gradient_accumulation_steps": 1, "max_learning_rate": 0.01,
            "min_learning_rate": 1e-7, "max_num_checkpoints": 10, "max_num_epochs": 20, "max_num_evals": 10,
            "max_seq_length_dpo": 8192, "max_seq_length_sft": 8192, "min_max_seq_length": 16,
            "merge_output_lora": True, "supports_full_training": False, "supports_reasoning": False,
            "supports_tools": False, "supports_vision": False,
            "lora_training": {"default_rank": 8, "max_rank": 64, "min_batch_size": 1, "max_batch_size": 16,
                              "max_batch_size_dpo": 8,
                              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]}}


def check_rows(text: str, method: str) -> str | None:
    """Together's documented dataset rules for conversational SFT and preference data."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if method == "dpo":
            msgs = (row.get("input") or {}).get("messages")
            outs = [row.get("preferred_output"), row.get("non_preferred_output")]
            if not msgs or any(not isinstance(o, list) or len(o) != 1 or o[0].get("role") != "assistant" for o in outs):
                return (f"line {n}: preference rows need input.messages and exactly one assistant message in "
                        "preferred_output and non_preferred_output")
        else:
            msgs = row.get("messages")
            if not msgs or not any(m.get("role") == "assistant" for m in msgs):
                return f"line {n}: conversational rows need messages with at least one assistant message"
        if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str)
               for m in msgs):
            return f"line {n}: each message needs a role (system, user, assistant) and string content"
    return None


class FakeTogether:
    def __init__(self, api_key: str, models: list[str], adapter_factory=None, archive: str = "zst"):
        self.api_key, self.models, self.adapter_factory, self.archive = api_key, set(models), adapter_factory, archive
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.creates: list[dict] = []  # every create body that reached us
        self.fail_at: int | None = None
        self.fail_message = "the training worker ran out of GPU memory"
        self.fail_status = "error"
        self.drop_create_answer = False
        self.ticks_per_step = 1
        self.served: dict[str, Path] = {}  # job id -> adapter folder it was served from
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the job's life: one tick per retrieve ----------------------------------------------------
    def _event(self, job: dict, kind: str, message: str, level: str = "info", **extra) -> None:
        job["_events"].append({"object": "fine-tune-event", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "type": kind, "message": message, "level": level, **extra})

    def _tick(self, job: dict) -> None:
        st = job["status"]
        if st in ("completed", "error", "cancelled"):
            return
        if st == "cancel_requested":
            job["status"] = "cancelled"
            self._event(job, "job_stopped", "Job was cancelled by the user")
            return
        if st != "running":
            job["status"] = STATUSES[STATUSES.index(st) + 1]
            if job["status"] == "running":
                self._event(job, "training_start", "Training started", step=0, total_steps=job["_total"])
            elif job["status"] == "completed":
                self._event(job, "job_complete", f"Job finished; model {job['model_output_name']}")
            return
        job["_ticks"] += 1
        if job["_ticks"] % self.ticks_per_step:
            return
        step = job["_step"] = job["_step"] + 1
        if self.fail_at is not None and step >= self.fail_at:
            job["status"] = self.fail_status
            self._event(job, "job_error", self.fail_message, level="error", step=step)
            return
        job["_metrics"].append({"global_step": float(step), "loss": 1.0 / step, "learning_rate": job["learning_rate"]})
        if step == job["_total"]:
            if job.get("validation_file"):
                job["_metrics"].append({"global_step": float(step), "eval_loss": 0.5})
            self._event(job, "training_complete", "Training completed", step=step, total_steps=job["_total"])
            job["status"] = "compressing"

    def _job_view(self, job: dict) -> dict:
        return {**{k: v for k, v in job.items() if not k.startswith("_")},
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}

    # -- HTTP -------------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body=None, headers: dict | None = None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str):
                self._send(code, {"error": {"message": message, "type": "invalid_request_error"}})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorised(self) -> bool:
                if self.path.startswith("/_upload/"):
                    return True  # a presigned URL carries no key
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._error(401, "Invalid API key provided")
                    return False
                return True

            def do_GET(self):  # noqa: N802
                if not self._authorised():
                    return
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                parts = u.path.strip("/").split("/")
                with fake.lock:
                    if u.path == "/v1/fine-tunes/models/limits":
                        name = q.get("model_name", "")
                        if name in fake.jobs:
                            name = fake.jobs[name]["model"]
                        if name not in fake.models:
                            return self._error(404, f"Model {name} is not available for fine-tuning")
                        return self._send(200, _limits(name))
                    if u.path == "/v1/fine-tunes":
                        return self._send(200, {"data": [fake._job_view(j) for j in fake.jobs.values()]})
                    if u.path == "/v1/finetune/download":
                        job = fake.jobs.get(q.get("ft_id", ""))
                        if job is None or job["status"] != "completed":
                            return self._error(400, "Job is not completed")
                        if q.get("checkpoint") != "adapter":
                            return self._error(400, "only the adapter is offered here")
                        return self._send(200, raw=fake._archive(job))
                    if len(parts) >= 3 and parts[:2] == ["v1", "fine-tunes"]:
                        job = fake.jobs.get(parts[2])
                        if job is None:
                            return self._error(404, f"Fine-tune {parts[2]} not found")
                        if len(parts) == 3:
                            fake._tick(job)
                            return self._send(200, {**fake._job_view(job), "events": job["_events"]})
                        if parts[3] == "events":
                            return self._send(200, {"data": job["_events"]})
                        if parts[3] == "metrics":
                            return self._send(200, {"metrics": job["_metrics"]})
                return self._error(404, f"no route {u.path}")

            def do_PUT(self):  # noqa: N802
                fid = self.path.rsplit("/", 1)[-1]
                data = self._body()
                with fake.lock:
                    if fid not in fake.files:
                        return self._error(404, "unknown upload")
                    fake.files[fid]["content"] = data
                self._send(200, {})

            def do_POST(self):  # noqa: N802
                if not self._authorised():
                    return
                path = urlparse(self.path).path
                raw = self._body()
                with fake.lock:
                    if path == "/v1/files":
                        fields = _form_fields(raw, self.headers.get("Content-Type", ""))
                        fid = f"file-{uuid.uuid4()}"
                        fake.files[fid] = {"name": fields.get("file_name", ""), "purpose": fields.get("purpose"),
                                           "content": None}
                        return self._send(302, {}, headers={"Location": f"{fake.url}/_upload/{fid}",
                                                            "X-Together-File-Id": fid})
                    if path.startswith("/v1/files/") and path.endswith("/preprocess"):
                        fid = path.split("/")[3]
                        f = fake.files.get(fid)
                        if f is None or f["content"] is None:
                            return self._error(404, f"file {fid} was not uploaded")
                        return self._send(200, {"id": fid, "bytes": len(f["content"]), "created_at": int(time.time()),
                                                "filename": f["name"], "FileType": "jsonl", "object": "file",
                                                "purpose": "fine-tune", "processing_status": "COMPLETED"})
                    if path == "/v1/fine-tunes/estimate-price":
                        return self._send(200, {"estimation_available": True, "allowed_to_proceed": True,
                                                "estimated_total_price": 0.42, "user_limit": 100.0})
                    if path == "/v1/fine-tunes":
                        body = json.loads(raw)
                        fake.creates.append(body)
                        problem = fake._refuse(body)
                        if problem:
                            return self._error(400, problem)
                        job = fake._new_job(body)
                        if fake.drop_create_answer:
                            fake.drop_create_answer = False
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return None
                        return self._send(200, fake._job_view(job))
                    if path.startswith("/v1/fine-tunes/") and path.endswith("/cancel"):
                        job = fake.jobs.get(path.split("/")[3])
                        if job is None:
                            return self._error(404, "not found")
                        job["status"] = "cancel_requested"
                        return self._send(200, fake._job_view(job))
                return self._error(404, f"no route {path}")

        return H

    def _refuse(self, body: dict) -> str | None:
        base = body.get("model")
        if body.get("from_checkpoint"):
            parent = self.jobs.get(body["from_checkpoint"].split(":")[0])
            if parent is None or parent["status"] != "completed":
                return f"checkpoint {body['from_checkpoint']} is not a completed job"
            if base:
                return "give a model or a checkpoint, not both"
        elif base not in self.models:
            return f"Model {base} is not available for fine-tuning"
        for key in ("training_file", "validation_file"):
            fid = body.get(key)
            if fid and (fid not in self.files or self.files[fid]["content"] is None):
                return f"{key} {fid} does not exist"
            if fid:
                problem = check_rows(self.files[fid]["content"].decode(), body["training_method"]["method"])
                if problem:
                    return f"{key} {fid}: {problem}"
        lt = body.get("training_type") or {}
        if lt.get("type") != "Lora":
            return "this model offers LoRA training only"
        return None

    def _new_job(self, body: dict) -> dict:
        jid = f"ft-{uuid.uuid4()}"
        parent = self.jobs.get((body.get("from_checkpoint") or "").split(":")[0])
        model = parent["model"] if parent else body["model"]
        lines = len([x for x in self.files[body["training_file"]]["content"].decode().splitlines() if x.strip()])
        batch = body.get("batch_size") if isinstance(body.get("batch_size"), int) else 8
        job = {"id": jid, "status": "pending", "user_id": "user-test", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
               "model": model, "training_file": body["training_file"], "validation_file": body.get("validation_file"),
               "training_method": body["training_method"], "training_type": body["training_type"],
               "n_epochs": body.get("n_epochs"), "batch_size": body.get("batch_size"),
               "learning_rate": body.get("learning_rate"), "from_checkpoint": body.get("from_checkpoint"),
               "model_output_name": f"user-test/{model.split('/')[-1]}-{body.get('suffix') or 'ft'}-{jid[3:11]}",
               "_total": max(1, math.ceil(lines * (body.get("n_epochs") or 1) / batch)), "_step": 0, "_ticks": 0,
               "_events": [], "_metrics": []}
        self._event(job, "job_pending", "Fine tune request created")
        self.jobs[jid] = job
        return job

    def _archive(self, job: dict) -> bytes:
        folder = self.adapter_factory(job)
        self.served[job["id"]] = folder
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(Path(folder).iterdir()):
                tar.add(f, arcname=f"{job['model_output_name'].split('/')[-1]}/{f.name}")
        data = buf.getvalue()
        if self.archive == "gz":
            import gzip
            return gzip.compress(data)
        import zstandard
        return zstandard.ZstdCompressor().compress(data)


def _form_fields(raw: bytes, content_type: str) -> dict:
    """The text fields of a multipart/form-data body (the upload request carries no file bytes)."""
    boundary = content_type.partition("boundary=")[2].strip('"').encode()
    fields = {}
    for part in raw.split(b"--" + boundary) if boundary else []:
        head, _, value = part.partition(b"\r\n\r\n")
        if b'name="' in head:
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            fields[name] = value.rstrip(b"\r\n").decode(errors="replace")
    return fields
