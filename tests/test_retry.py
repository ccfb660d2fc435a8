"""Retries, backoff and fallback of the OpenAI-compatible backend, against a small local HTTP
server that answers 429, 500 and slow responses on purpose. No result may be lost or duplicated."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from character.inference.openai_compat import OpenAIBackend
from character.types import Message, SamplingParams


class Flaky:
    """Per prompt: attempt 1 -> 429, attempt 2 -> 500, attempt 3 -> too slow, attempt 4 -> answer.
    Model 'down' always answers 503; any other model answers at once."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                model = body["model"]
                with outer.lock:
                    n = outer.attempts[prompt] = outer.attempts.get(prompt, 0) + 1
                if model == "down":
                    return self.reply(503, {"error": {"message": "overloaded"}}, model, prompt)
                if model == "flaky" and n == 1:
                    return self.reply(429, {"error": {"message": "slow down"}}, model, prompt)
                if model == "flaky" and n == 2:
                    return self.reply(500, {"error": {"message": "oops"}}, model, prompt)
                if model == "flaky" and n == 3:
                    time.sleep(1.5)  # longer than the client's timeout
                self.reply(200, {
                    "id": f"c{n}", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"echo:{prompt}"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}, model, prompt)

            def reply(self, code, payload, model, prompt):
                with outer.lock:
                    outer.log.append((model, prompt, code))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky():
    f = Flaky()
    yield f
    f.server.shutdown()


def convs(n):
    return [[Message(role="user", content=f"prompt-{i}")] for i in range(n)]


def test_retries_lose_and_duplicate_nothing(flaky):
    b = OpenAIBackend("flaky", base_url=flaky.url, timeout=0.5, max_retries=4, backoff_base=0.01,
                      max_concurrency=4)
    out = b.generate(convs(12), SamplingParams(max_tokens=8))
    assert [o[0].text for o in out] == [f"echo:prompt-{i}" for i in range(12)]
    assert all(len(o) == 1 for o in out)
    codes = {code for _, _, code in flaky.log}
    assert {429, 500, 200} <= codes
    assert b.stats["retries"] >= 12 * 3


def test_fallback_when_primary_stays_overloaded(flaky):
    b = OpenAIBackend("down", base_url=flaky.url, fallback="steady", max_retries=2, backoff_base=0.01)
    out = b.generate(convs(3), SamplingParams(max_tokens=8))
    assert [o[0].text for o in out] == [f"echo:prompt-{i}" for i in range(3)]
    assert all(o[0].model == "openai/steady" for o in out)
    assert sum(1 for m, _, c in flaky.log if m == "down" and c == 503) == 3 * 3  # 1 try + 2 retries each
    assert b.stats["fallbacks"] == 3


def test_without_fallback_a_failed_request_is_a_counted_item_and_the_rest_are_kept(flaky):
    b = OpenAIBackend("down", base_url=flaky.url, max_retries=1, backoff_base=0.01)
    out = b.generate(convs(2), SamplingParams(max_tokens=8))
    assert [o[0].finish_reason for o in out] == ["error", "error"]
    assert "still failing after 1 retries" in out[0][0].error and b.stats["failures"] == 2
    ok = OpenAIBackend("steady", base_url=flaky.url).generate(convs(1), SamplingParams(max_tokens=8))
    assert ok[0][0].text == "echo:prompt-0"


def test_key_never_in_repr(flaky):
    b = OpenAIBackend("steady", base_url=flaky.url, api_key="sk-secret-value-123")
    assert "secret" not in repr(b)
