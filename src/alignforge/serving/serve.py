"""``alignforge serve CHECKPOINT``: an OpenAI-compatible HTTP server on the one sampling engine.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream: true`` as server-sent events in OpenAI's chunk format), ``GET /health``.

How a request flows:

1. The endpoint validates the JSON body by hand (:mod:`alignforge.serving.openai_requests`: every
   problem is a 400 whose message names the field and what was expected, in OpenAI's
   ``{"error": {...}}`` shape, which the ``openai`` client turns into ``BadRequestError``; a wrong
   model name is a 404 → ``NotFoundError``), encodes the prompt exactly as training does
   (:func:`alignforge.generation.encode_prompts` for chat, the raw text for completions), and hands
   a :class:`Job` to the :class:`BatchingEngine`.
2. The engine's one worker thread takes the first waiting job, waits ``serve.batch_window_ms`` for
   more (or until ``serve.max_batch`` sequences are waiting), groups the jobs by sampling
   parameters, and runs **one** :func:`alignforge.generation.generate` call per group (prompts of
   different lengths are fine: the engine left-pads them and pads never change results). While a
   batch runs, new requests queue up and form the next batch, so under load batches fill by
   themselves (:mod:`alignforge.serving.batching`).
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
import sys
import time
import uuid
from typing import Any, Iterator, Sequence

from alignforge.config import ServeConfig
from alignforge.generation import encode_prompts
from alignforge.serving.batching import Answer, BatchingEngine, Job
from alignforge.serving.openai_requests import CHAT_FIELDS, COMPLETION_FIELDS, APIError, Server, parse_messages
from alignforge.textcheck import find_surrogate


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
        body = server.check_fields(await _json(request), CHAT_FIELDS)
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
        body = server.check_fields(await _json(request), COMPLETION_FIELDS)
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
