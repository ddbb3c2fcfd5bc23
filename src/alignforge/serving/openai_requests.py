"""The OpenAI API's request side for ``alignforge serve``: errors in OpenAI's shape (:class:`APIError`),
each endpoint's accepted fields, and the checks that turn a request body into a :class:`Job` for the
batching engine (:class:`Server`: the served model's name and limits; :func:`parse_messages`).

Bodies are validated by hand, so every problem is a 400 whose message names the field and what was
expected, in OpenAI's ``{"error": {...}}`` shape, which the ``openai`` client turns into
``BadRequestError``; a wrong model name is a 404 → ``NotFoundError``. Fields some clients send that
change nothing are ignored; fields asking for what this server does not do are refused by name.
"""

from __future__ import annotations

import json
import time
from typing import Any

from alignforge.generation import SamplingParams
from alignforge.serving.batching import BatchingEngine, Job

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
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = _COMMON | {"prompt"}


class APIError(Exception):
    """A request problem, sent as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


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
