"""Backend for any OpenAI-compatible chat endpoint: OpenAI, OpenRouter, Together, a vLLM server,
Ollama, a llama.cpp server.

Spec `openai/<model>`. Base URL and key come from the arguments, else OPENAI_BASE_URL and
OPENAI_API_KEY. Requests run concurrently (bounded). Every transient failure a real provider
produces is retried with exponential backoff and full jitter, honouring Retry-After: HTTP
408/409/429/5xx, refused or reset connections, timeouts, and a 200 whose body is cut off, is not
JSON or has no choices. When the primary model stays overloaded after its retries, the `fallback`
model gets the request (as the seeds do: primary, then fallback). A request that still fails
comes back as a Completion with finish_reason "error" and the reason, so the caller keeps the rest
of the batch and counts it; results always come back one per request, in input order.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
from tqdm import tqdm

from ..errors import GenerationError, MissingDependencyError, MissingKeyError, ModelSpecError
from ..settings import env
from ..types import Completion, Conversation, SamplingParams
from . import as_messages

try:
    import openai
except ImportError:  # pragma: no cover
    raise MissingDependencyError("backend 'openai' needs the openai SDK; run: pip install -e '.[openai]'") from None

RETRY_STATUS = {408, 409, 429}  # and every 5xx
RETRY_AFTER_CAP = 60.0  # seconds: the longest Retry-After we wait out


class _BadResponse(Exception):
    """A 200 whose body was cut off, was not JSON, or held no choices."""


def _transient(e: Exception) -> bool:
    if isinstance(e, openai.APIStatusError):
        return (e.status_code in RETRY_STATUS or e.status_code >= 500) and not _is_rejection(e)
    return isinstance(e, (openai.APIConnectionError, openai.APIResponseValidationError, _BadResponse, ValueError))


def retry_after(e: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date; retry-after-ms)."""
    response = getattr(e, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
# Structured-output request styles, tried in order; a server that rejects one (HTTP 400) is
# asked the next way from then on. llama.cpp's server takes a schema inside `json_object`.
SCHEMA_MODES = ("json_schema", "json_object", "none")


class OpenAIBackend:
    supports_logprobs = False  # chat completions cannot score a given response
    supports_prefill = False

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 fallback: str | None = None, max_concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 5, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 reasoning_budget: int | None = None, reasoning_effort: str | None = None,
                 schema_mode: str = "json_schema", label_logprobs: int = 0):
        self.model = model
        self.name = f"openai/{model}"
        self.fallback = fallback
        base_url = base_url or env("OPENAI_BASE_URL") or None
        api_key = api_key or env("OPENAI_API_KEY")
        if not api_key:
            if base_url is None:
                raise MissingKeyError(f"model='openai/{model}': OPENAI_API_KEY is not set; put it in "
                                      "the environment or .env, or set OPENAI_BASE_URL to a local server")
            api_key = "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key
        if schema_mode not in SCHEMA_MODES:
            raise ModelSpecError(f"schema_mode={schema_mode!r}: use one of {', '.join(SCHEMA_MODES)}")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.reasoning_budget = reasoning_budget
        self.reasoning_effort = reasoning_effort
        self.schema_mode = schema_mode
        # > 0: as a judge, read option labels from this many top log-probs of the first answer token (servers
        # that return `top_logprobs`: OpenAI, vLLM, llama.cpp); 0: judge from generated text
        self.label_logprobs = int(label_logprobs)
        self._mode_lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "fallbacks": 0, "failures": 0}

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(model={self.model!r}, base_url={str(self.client.base_url)!r})"

    # -- request building ----------------------------------------------------------------------
    def _kwargs(self, params: SamplingParams, seed: int | None, json_schema: dict | None) -> dict:
        kw: dict = dict(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p)
        if params.stop:
            kw["stop"] = params.stop[:4]  # the OpenAI API takes at most four
        if seed is not None:
            kw["seed"] = seed
        extra: dict = {}
        if self.reasoning_budget:
            extra["reasoning"] = {"max_tokens": self.reasoning_budget}  # OpenRouter's form
        if self.reasoning_effort:
            kw["reasoning_effort"] = self.reasoning_effort
        if json_schema is not None:
            if self.schema_mode == "json_schema":
                kw["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": json_schema.get("title", "output"), "schema": json_schema, "strict": False}}
            elif self.schema_mode == "json_object":
                kw["response_format"] = {"type": "json_object", "schema": json_schema}
        if extra:
            kw["extra_body"] = extra
        return kw

    def _sleep(self, attempt: int, asked: float | None = None) -> None:
        wait = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))
        time.sleep(max(wait, min(asked, RETRY_AFTER_CAP)) if asked is not None else wait)

    def _call(self, model: str, messages: list[dict], kwargs: dict):
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            self.stats["requests"] += 1
            try:
                resp = self.client.chat.completions.create(model=model, messages=messages, **kwargs)
                if not getattr(resp, "choices", None):  # a non-JSON 200 comes back as text; an empty one too
                    raise _BadResponse(f"HTTP 200 without choices: {str(resp)[:80]!r}")
                return resp
            except openai.InternalServerError as e:
                if _is_rejection(e):
                    raise _Rejected(str(e)) from None
                last = e
            except Exception as e:  # noqa: BLE001 - sorted into transient (retried) and not (raised)
                if not _transient(e):
                    raise
                last = e
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                self._sleep(attempt, retry_after(last))
        raise _Exhausted(last)

    def _one(self, conversation: Conversation, params: SamplingParams, seed: int | None,
             json_schema: dict | None) -> Completion:
        messages = as_messages(conversation)
        while True:
            mode = self.schema_mode
            kwargs = self._kwargs(params, seed, json_schema)
            try:
                try:
                    resp, used = self._call(self.model, messages, kwargs), self.model
                except _Exhausted:
                    if not self.fallback:
                        raise
                    self.stats["fallbacks"] += 1
                    resp, used = self._call(self.fallback, messages, kwargs), self.fallback
            except (openai.BadRequestError, openai.UnprocessableEntityError, _Rejected) as e:
                if json_schema is not None and mode != "none" and (isinstance(e, _Rejected) or _about_format(e)):
                    with self._mode_lock:  # this server refuses that style: ask the next way
                        if self.schema_mode == mode:
                            self.schema_mode = SCHEMA_MODES[SCHEMA_MODES.index(mode) + 1]
                    continue
                return self._failed(f"the server refused the request ({_short(e)})")
            except openai.AuthenticationError:
                raise MissingKeyError(f"model={self.name!r}: the server refused the API key; "
                                      "check OPENAI_API_KEY (and OPENAI_BASE_URL)") from None
            except openai.NotFoundError as e:
                raise ModelSpecError(f"model={self.name!r}: the server does not know this model "
                                     f"({_short(e)}); check the model name") from None
            except openai.APIStatusError as e:  # 402, 403, 413, ...: this request, not the next ones
                return self._failed(f"HTTP {e.status_code}: {_short(e)}")
            except _Exhausted as e:
                return self._failed(f"still failing after {self.max_retries} retries"
                                    f"{' and fallback' if self.fallback else ''} ({_short(e.last)})")
            choice = resp.choices[0]
            reason = "length" if choice.finish_reason == "length" else "stop"
            tokens = resp.usage.completion_tokens if resp.usage else 0
            return Completion(text=(choice.message.content or "").strip(), finish_reason=reason,
                              model=f"openai/{used}", completion_tokens=tokens)

    def _failed(self, reason: str) -> Completion:
        self.stats["failures"] += 1
        return Completion(text="", finish_reason="error", model=self.name, error=reason)

    # -- protocol ------------------------------------------------------------------------------
    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 json_schema: dict | None = None, progress: bool = False) -> list[list[Completion]]:
        jobs = [(i, k) for i in range(len(conversations)) for k in range(params.n)]
        seed = lambda k: None if params.seed is None else params.seed + k  # noqa: E731
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            futures = [pool.submit(self._one, conversations[i], params, seed(k), json_schema) for i, k in jobs]
            iterator = futures
            if progress:
                iterator = tqdm(futures, desc=f"generate {self.name}", unit="req")
            flat = [f.result() for f in iterator]
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(conversations))]

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        """Yield the reply as it arrives. A stream that breaks midway raises GenerationError after
        the pieces already yielded (the caller keeps them)."""
        kwargs = self._kwargs(params, params.seed, None)
        received = 0
        try:
            chunks = self.client.chat.completions.create(
                model=self.model, messages=as_messages(conversation), stream=True, **kwargs)
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    received += len(chunk.choices[0].delta.content)
                    yield chunk.choices[0].delta.content
        except (openai.APIError, httpx.HTTPError, ValueError) as e:
            where = f"after {received} characters" if received else "before any text arrived"
            raise GenerationError(f"model={self.name!r}: the stream broke {where} ({_short(e)})") from None

    @property
    def reads_labels(self) -> bool:
        return self.label_logprobs > 0

    def next_token_logprobs(self, conversations: list[Conversation], candidates: list[str]) -> list[list[float]]:
        """Log-probability of each candidate as the first answer token, from the server's `top_logprobs`
        (one 1-token request per conversation). A candidate outside the top list gets the smallest listed
        log-prob, an upper bound, which pulls the verdict toward even rather than inventing a preference."""
        kwargs = dict(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.label_logprobs)

        def one(conv: Conversation) -> list[float]:
            try:
                resp = self._call(self.model, as_messages(conv), kwargs)
            except (_Exhausted, _Rejected, openai.APIError) as e:
                raise GenerationError(f"model={self.name!r}: label log-probs request failed ({_short(e)})") from None
            lp = resp.choices[0].logprobs
            top = (lp.content[0].top_logprobs if lp and lp.content else None) or []
            if not top:
                raise GenerationError(f"model={self.name!r}: the server returned no top_logprobs; set "
                                      "label_logprobs: 0 in this model's options to judge from text")
            best: dict[str, float] = {}
            for t in top:
                key = t.token.strip().strip("\"'*(").upper()
                best[key] = max(best.get(key, -math.inf), t.logprob)
            floor = min(t.logprob for t in top)
            return [best.get(c.upper(), floor) for c in candidates]

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, conversations))

    def logprobs(self, conversations: list[Conversation], responses: list[str]) -> list[list[float]]:
        raise GenerationError(f"model={self.name!r}: OpenAI-compatible chat endpoints cannot score "
                              "given responses; use an hf/ or embedded model for likelihood metrics")


class _Rejected(Exception):
    """A request the server refuses as malformed, whatever status code it used."""


class _Exhausted(Exception):
    """A transient failure that outlasted the retries."""

    def __init__(self, last: Exception | None):
        super().__init__(str(last))
        self.last = last or RuntimeError("no attempt made")


def _about_format(e: Exception) -> bool:
    """Whether a refusal is about the structured-output request (so asking another way can help)."""
    text = str(e).lower()
    return any(w in text for w in ("response_format", "json_schema", "json_object", "schema", "grammar"))


def _is_rejection(e: Exception) -> bool:
    # llama-cpp-python's server answers a request it cannot parse (e.g. an unknown
    # response_format type) with HTTP 500 and a pydantic "validation error": retrying cannot help.
    return isinstance(e, openai.InternalServerError) and "validation error" in str(e)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
