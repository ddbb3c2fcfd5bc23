"""``alignforge serve CHECKPOINT``: an OpenAI-compatible HTTP server on the one sampling engine.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream: true`` as server-sent events in OpenAI's chunk format), ``GET /health``.

How a request flows:

1. The endpoint validates the JSON body by hand (so every problem is a 400 whose message names the
   field and what was expected, in OpenAI's ``{"error": {...}}`` shape, which the ``openai`` client
   turns into ``BadRequestError``; a wrong model name is a 404 → ``NotFoundError``), encodes the
   prompt exactly as training does (:func:`alignforge.generation.encode_prompts` for chat, the raw
   text for completions), and hands a :class:`Job` to the :class:`BatchingEngine`.
2. The engine's one worker thread takes the first waiting job, waits ``serve.batch_window_ms`` for
   more (or until ``serve.max_batch`` sequences are waiting), groups the jobs by sampling
   parameters, and runs **one** :func:`alignforge.generation.generate` call per group (prompts of
   different lengths are fine: the engine left-pads them and pads never change results). While a
   batch runs, new requests queue up and form the next batch, so under load batches fill by
   themselves.
3. Streaming is "generate, then stream": the answer is computed as a whole, then sent as token
   deltas. The engine has no per-step callback, and adding one would put Python work in its inner
   loop for every caller; the cost is that the first chunk arrives when the answer is complete.

A request with a ``seed`` (and temperature > 0) runs in a group of its own: the engine's draws
depend on the batch it is in, so batching it with strangers would break "same seed, same answer".
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`request:
# Request`) at runtime, and `Request` is imported inside create_app to keep fastapi optional.
import asyncio
import json
import os
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from alignforge.config import ServeConfig
from alignforge.generation import SamplingParams, encode_prompts, generate
from alignforge.textcheck import find_surrogate

ROLES = ("system", "user", "assistant")
# Fields some clients send that change nothing here; anything else unknown is rejected by name.
_IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
_UNSUPPORTED = {  # field -> value that means "not asked for"
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"), "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "response_format": (None, {"type": "text"}),
}
_COMMON = {"model", "temperature", "top_p", "top_k", "max_tokens", "n", "stop", "seed", "stream"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}
_COMPLETION_FIELDS = _COMMON | {"prompt"}


class APIError(Exception):
    """A request problem, sent as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------- the batching engine


@dataclass
class Job:
    """One request: its prompts (token ids), ``n`` answers each, and where the result goes."""

    prompts: list[list[int]]
    n: int
    params: SamplingParams
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    def group_key(self) -> Any:
        # Greedy ignores the seed; a seeded sampled request gets a group of its own (see module doc).
        if self.params.greedy:
            return ("greedy", self.params.max_new_tokens, self.params.stop_strings)
        if self.params.seed is not None:
            return ("seeded", id(self))
        return self.params


@dataclass
class Answer:
    """One sampled answer of a job: text, token ids (stop token included), finish reason."""

    text: str
    token_ids: list[int]
    finish_reason: str


class BatchingEngine:
    """A worker thread that batches waiting jobs into :func:`generate` calls (see module doc).

    ``submit(job)`` returns the job's future, resolved to a list of :class:`Answer` (prompt-major:
    ``answers[p * n + j]``) or to the exception the generate call raised. ``generate_calls`` and
    ``rows_generated`` count the work done (tests check that concurrent requests were batched).
    """

    def __init__(self, model, tokenizer, max_batch: int = 32, window_ms: float = 10.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.window = max_batch, window_ms / 1000.0
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.generate_calls = 0
        self.rows_generated = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="alignforge-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` plus whatever arrives within the window (or until a batch is full)."""
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.window
        while rows < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.rows
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            groups: dict[Any, list[Job]] = {}
            for job in jobs:  # dicts keep insertion order: the oldest request's group runs first
                groups.setdefault(job.group_key(), []).append(job)
            for group in groups.values():
                for chunk in self._chunks(group):
                    self._run(chunk)

    def _chunks(self, jobs: list[Job]) -> Iterator[list[Job]]:
        """Consecutive jobs up to ``max_batch`` rows (a job bigger than that runs alone)."""
        chunk, rows = [], 0
        for job in jobs:
            if chunk and rows + job.rows > self.max_batch:
                yield chunk
                chunk, rows = [], 0
            chunk.append(job)
            rows += job.rows
        if chunk:
            yield chunk

    def _run(self, jobs: list[Job]) -> None:
        prompts = [p for job in jobs for p in job.prompts for _ in range(job.n)]
        try:
            gen = generate(self.model, prompts, jobs[0].params, eos_token_id=self.eos, pad_token_id=self.pad,
                           tokenizer=self.tokenizer)
        except Exception as e:  # noqa: BLE001 - the error goes to the requests; the worker lives on
            for job in jobs:
                job.future.set_exception(e)
            return
        self.generate_calls += 1
        self.rows_generated += len(prompts)
        answers = [Answer(t, s, f) for t, s, f in zip(gen.texts, gen.sequences, gen.finish_reason)]
        start = 0
        for job in jobs:
            job.future.set_result(answers[start : start + job.rows])
            start += job.rows


# ---------------------------------------------------------------------------------- request validation


def _number(body: dict, key: str, default, lo=None, hi=None, lo_open=False, integer=False):
    value = body.get(key)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not ok_type:
        raise APIError(400, f"'{key}': expected {what}, got {json.dumps(value)}", key)
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if low_bad or (hi is not None and value > hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise APIError(400, f"'{key}': expected {what} in {rng}, got {value}", key)
    return value


def _stop_strings(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > 4:
        raise APIError(400, f"'stop': expected a non-empty string or a list of at most 4 non-empty strings, "
                            f"got {json.dumps(stop)}", "stop")
    return tuple(items)


def _message_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts make sense for a text model
        parts = []
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"'{where}.content[{k}]': expected a text part "
                                    f"{{\"type\": \"text\", \"text\": ...}}, got {json.dumps(part)[:200]}", where)
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"'{where}.content': expected a string or a list of text parts, got "
                        f"{json.dumps(content)[:200]}", where)


def parse_messages(messages: Any) -> list[dict]:
    """The request's ``messages`` as ``[{role, content}]`` for the chat template (400 when malformed)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, f"'messages': expected a non-empty list of {{role, content}} objects, got "
                            f"{json.dumps(messages)[:200]}", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"'{where}': expected an object with 'role' and 'content', got {json.dumps(m)[:200]}",
                           where)
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients' name for the system role
            role = "system"
        if role not in ROLES:
            raise APIError(400, f"'{where}.role': expected one of {', '.join(ROLES)}, got {json.dumps(role)}", where)
        if "content" not in m or m["content"] is None:
            raise APIError(400, f"'{where}': missing 'content'", where)
        out.append({"role": role, "content": _message_content(m["content"], where)})
    return out


class Server:
    """Everything an endpoint needs: the served model's name and limits, and the engine."""

    def __init__(self, engine: BatchingEngine, model_name: str, default_max_tokens: int = 256, max_n: int = 16):
        self.engine, self.model_name = engine, model_name
        self.tokenizer = engine.tokenizer
        self.default_max_tokens, self.max_n = default_max_tokens, max_n
        self.created = int(time.time())
        cfg = engine.model.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def check_fields(self, body: Any, allowed: set[str]) -> dict:
        if not isinstance(body, dict):
            raise APIError(400, "request body: expected a JSON object")
        for key, neutral in _UNSUPPORTED.items():
            if key in body and body[key] not in neutral:
                raise APIError(400, f"'{key}' is not supported by alignforge serve", key)
        unknown = sorted(set(body) - allowed - _IGNORED_FIELDS - set(_UNSUPPORTED))
        if unknown:
            raise APIError(400, f"unrecognized request field(s): {', '.join(unknown)}; supported: "
                                f"{', '.join(sorted(allowed))}", unknown[0])
        model = body.get("model")
        if not isinstance(model, str):
            raise APIError(400, "'model': required, the id of the served model (see GET /v1/models)", "model")
        if model != self.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found")
        return body

    def job(self, body: dict, prompts: list[list[int]], max_tokens_key: str = "max_tokens") -> Job:
        """Sampling parameters from the body, checked against the model's context length."""
        temperature = _number(body, "temperature", 1.0, lo=0, hi=2)
        top_p = _number(body, "top_p", 1.0, lo=0, hi=1, lo_open=True)
        top_k = _number(body, "top_k", 0, lo=0, integer=True)
        n = _number(body, "n", 1, lo=1, hi=self.max_n, integer=True)
        seed = _number(body, "seed", None, integer=True)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, f"'stream': expected true or false, got {json.dumps(stream)}", "stream")
        longest = max(len(p) for p in prompts)
        room = (self.context - longest) if self.context else None
        asked = _number(body, max_tokens_key, None, lo=1, integer=True)
        if asked is None and max_tokens_key != "max_tokens":
            asked = _number(body, "max_tokens", None, lo=1, integer=True)
        if room is not None and (room < 1 or (asked is not None and asked > room)):
            raise APIError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{longest} tokens and max_tokens is {asked if asked is not None else 1}. "
                                "Shorten the prompt or lower max_tokens.", "messages", "context_length_exceeded")
        max_tokens = asked if asked is not None else min(self.default_max_tokens, room or self.default_max_tokens)
        params = SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=top_k,
                                max_new_tokens=max_tokens, stop_strings=_stop_strings(body), seed=seed)
        return Job(prompts=prompts, n=n, params=params)

    def completion_prompts(self, prompt: Any) -> list[list[int]]:
        """``prompt``: a string, a list of strings, a list of token ids, or a list of such lists."""
        vocab = len(self.tokenizer)
        bad = APIError(400, f"'prompt': expected a non-empty string, a list of strings, or token ids, got "
                            f"{json.dumps(prompt)[:200]}", "prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise bad
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = [prompt]
        out = []
        for p in prompt:
            if isinstance(p, str):
                ids = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            elif isinstance(p, list) and all(isinstance(t, int) and 0 <= t < vocab for t in p):
                ids = p
            else:
                raise bad
            if not ids:
                raise APIError(400, "'prompt': an empty prompt has no token to continue from", "prompt")
            out.append([int(t) for t in ids])
        return out


def stream_deltas(tokenizer, token_ids: Sequence[int], final_text: str) -> Iterator[str]:
    """Text pieces, one per token where the decoded text grew, that concatenate to ``final_text``.

    Decoding a prefix can end in half a UTF-8 character (shown as U+FFFD) or run past a stop
    string; only the part that agrees with the final text is sent, the rest once it is settled.
    """
    sent = 0
    for i in range(1, len(token_ids) + 1):
        partial = tokenizer.decode(list(token_ids[:i]), skip_special_tokens=True)
        agree = len(os.path.commonprefix([partial, final_text]))
        if agree > sent:
            yield final_text[sent:agree]
            sent = agree
    if sent < len(final_text):
        yield final_text[sent:]


# ---------------------------------------------------------------------------------- the app


def create_app(server: Server):
    """The FastAPI app for ``server`` (its engine must be running)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="alignforge serve", docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    async def _json(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from None
        # JSON's "\udcff" decodes to a lone surrogate: not Unicode text, so a tokenizer, or the
        # answer that echoes it in an error, would fail on it. Refused here, naming the field.
        found = find_surrogate(body)
        if found is not None:
            param = found.field or None
            raise APIError(400, f"'{found.field or 'body'}': {found.message()}", param)
        return body

    async def _answers(job: Job) -> list[Answer]:
        try:
            return await asyncio.wrap_future(server.engine.submit(job))
        except ValueError as e:  # the engine refused these inputs (e.g. too long): the client's problem
            raise APIError(400, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a failed batch is a 500 for its requests, in OpenAI's shape
            # (a catch-all app exception handler would not do: Starlette re-raises after it, and
            # the client sees a reset connection instead of the error)
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}") from None

    def _model_card() -> dict:
        return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "alignforge"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "generate_calls": server.engine.generate_calls}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != server.model_name:
            raise APIError(404, f"The model '{model_id}' does not exist; this server serves '{server.model_name}'",
                           "model", "model_not_found")
        return _model_card()

    def _usage(job: Job, answers: list[Answer]) -> dict:
        prompt = sum(len(p) for p in job.prompts)
        completion = sum(len(a.token_ids) for a in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _sse(chunks: Iterator[dict]) -> StreamingResponse:
        def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _include_usage(body: dict) -> bool:
        opts = body.get("stream_options") or {}
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = server.check_fields(await _json(request), _CHAT_FIELDS)
        messages = parse_messages(body.get("messages"))
        try:
            prompt = encode_prompts(server.tokenizer, [messages])
        except Exception as e:  # the template refused the conversation (e.g. its own role rules)
            raise APIError(400, f"'messages': the chat template rejected them: {e}", "messages") from None
        job = server.job(body, prompt, "max_completion_tokens")
        answers = await _answers(job)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": server.model_name}
        if not body.get("stream"):
            choices = [{"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": None,
                        "finish_reason": a.finish_reason} for i, a in enumerate(answers)]
            return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(job, answers)}

        def chunks():
            def chunk(choices, **extra):
                return {**head, "object": "chat.completion.chunk", "choices": choices, **extra}

            for i, a in enumerate(answers):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                for piece in stream_deltas(server.tokenizer, a.token_ids, a.text):
                    yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "finish_reason": a.finish_reason}])
            if _include_usage(body):
                yield chunk([], usage=_usage(job, answers))

        return _sse(chunks())

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = server.check_fields(await _json(request), _COMPLETION_FIELDS)
        job = server.job(body, server.completion_prompts(body.get("prompt")))
        answers = await _answers(job)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": server.model_name}
        if not body.get("stream"):
            choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}
                       for i, a in enumerate(answers)]
            return {**head, "choices": choices, "usage": _usage(job, answers)}

        def chunks():
            for i, a in enumerate(answers):
                for piece in stream_deltas(server.tokenizer, a.token_ids, a.text):
                    yield {**head, "choices": [{"index": i, "text": piece, "logprobs": None, "finish_reason": None}]}
                yield {**head, "choices": [{"index": i, "text": "", "logprobs": None,
                                            "finish_reason": a.finish_reason}]}
            if _include_usage(body):
                yield {**head, "choices": [], "usage": _usage(job, answers)}

        return _sse(chunks())

    return app


# ---------------------------------------------------------------------------------- the stage


def load_server(cfg: ServeConfig) -> Server:
    """Load ``model.init`` and start its engine (ConfigError when the checkpoint cannot be loaded)."""
    from alignforge.models.load import load_for_inference

    model, tok = load_for_inference(cfg, "serve")
    name = cfg.serve.model_name or str(cfg.model.init).rstrip("/")
    engine = BatchingEngine(model, tok, max_batch=cfg.serve.max_batch, window_ms=cfg.serve.batch_window_ms)
    return Server(engine, name, default_max_tokens=cfg.serve.max_tokens, max_n=cfg.serve.max_n)


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    server = load_server(cfg)
    host, port = cfg.serve.host, cfg.serve.port
    print(f"alignforge serve: model '{server.model_name}' at http://{host}:{port}/v1 "
          f"(batches of up to {cfg.serve.max_batch}, window {cfg.serve.batch_window_ms:g} ms)", file=sys.stderr)
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level=cfg.serve.log_level)
    finally:
        server.engine.close()


def _sugar(argv: Sequence[str]) -> list[str]:
    """``--port N`` / ``--host H`` (design §1) → ``serve.port=N`` / ``serve.host=H``."""
    out, it = [], iter(argv)
    for a in it:
        for flag in ("port", "host"):
            if a == f"--{flag}":
                a = f"serve.{flag}={next(it, '')}"
            elif a.startswith(f"--{flag}="):
                a = f"serve.{flag}={a.split('=', 1)[1]}"
        out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import run_stage

    return run_stage("serve", ServeConfig, serve, _sugar(list(sys.argv[1:] if argv is None else argv)),
                     positional="model.init")


__all__ = ["APIError", "Answer", "BatchingEngine", "Job", "Server", "create_app", "load_server", "main",
           "parse_messages", "serve", "stream_deltas"]
