"""``alignforge chat CHECKPOINT``: a terminal chat with a checkpoint, on the one sampling engine.

Every user line is appended to the conversation, the whole history goes through the chat
template (:func:`alignforge.generation.generate_text`, the training-time encoding), and the answer
joins the history. Lines starting with ``/`` are commands::

    /reset              forget the conversation (the system message stays)
    /temperature 0.7    sampling temperature (0 = greedy)
    /top_p 0.9          nucleus mass in (0, 1]
    /max_tokens 64      longest answer
    /system TEXT        set the system message (and reset); `/system` alone removes it
    /help               this list
    /quit               leave (so do end of input and Ctrl-C)

Over a pipe (stdin not a terminal) only the answers are printed, one per line of input, so
``printf 'hi\\n/reset\\nbye\\n' | alignforge chat runs/world/sft`` is scriptable; command
acknowledgements and warnings go to stderr either way.

When the conversation no longer fits the model's context with room for ``max_tokens``, the
oldest turns are dropped (the system message is kept) and a note says so on stderr.

A line that is not valid text (bytes that are not UTF-8 reach Python as lone surrogates, e.g.
byte 0xFF as U+DCFF) is refused with its line number and the session goes on; no tokenizer can
encode such a line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence, TextIO

from alignforge.config import ChatConfig
from alignforge.textcheck import find_surrogate

HELP = __doc__.split("::\n\n")[1].split("\n\n")[0]


@dataclass
class ChatSession:
    """A conversation with a model: history, sampling settings, and one :meth:`reply` per user turn."""

    model: object
    tokenizer: object
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 128
    system: str | None = None
    history: list[dict] = field(default_factory=list)
    seed: int | None = None
    turns: int = 0

    def __post_init__(self):
        cfg = self.model.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def _fit(self) -> int:
        """Drop the oldest user/assistant pairs until prompt + max_tokens fits; returns how many
        messages were dropped. Raises ValueError if even the last user turn alone does not fit."""
        from alignforge.generation import encode_prompts

        dropped = 0
        while True:
            n = len(encode_prompts(self.tokenizer, [self.messages()])[0])
            if self.context is None or n + self.max_tokens <= self.context:
                return dropped
            if len(self.history) <= 1:
                self.history.clear()
                raise ValueError(f"this message ({n} tokens with the template) and max_tokens {self.max_tokens} "
                                 f"exceed the model's {self.context} positions; write less or lower /max_tokens")
            drop = 2 if len(self.history) > 2 else 1
            del self.history[:drop]
            dropped += drop

    def reply(self, text: str, warn: TextIO | None = None) -> str:
        """Add the user's ``text``, sample the answer, add it to the history and return it."""
        import torch

        from alignforge.generation import SamplingParams, generate_text

        found = find_surrogate(text)
        if found is not None:  # before it joins the history: every later turn would fail on it
            raise ValueError(found.message())
        self.history.append({"role": "user", "content": text})
        dropped = self._fit()
        if dropped and warn is not None:
            print(f"(context full: dropped the {dropped} oldest messages)", file=warn)
        params = SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_tokens)
        # A seeded session is reproducible turn by turn (each turn gets its own derived seed).
        device = next(self.model.parameters()).device  # a CUDA model samples with a CUDA generator
        gen = None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed * 100_003 + self.turns)
        answer = generate_text(self.model, self.tokenizer, [self.messages()], params, generator=gen).texts[0]
        self.history.append({"role": "assistant", "content": answer})
        self.turns += 1
        return answer

    def reset(self) -> None:
        self.history.clear()

    def command(self, line: str) -> tuple[bool, str]:
        """Run a ``/command``; returns (keep going, message for the user)."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False, ""
        if name == "reset":
            self.reset()
            return True, "(conversation reset)"
        if name == "help":
            return True, HELP
        if name == "system":
            self.system = arg or None
            self.reset()
            return True, f"(system message {'set' if arg else 'removed'}; conversation reset)"
        setters = {"temperature": (float, lambda v: v >= 0, "a number >= 0"),
                   "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                   "max_tokens": (int, lambda v: v >= 1, "an integer >= 1")}
        if name in setters:
            cast, ok, expected = setters[name]
            if not arg:
                return True, f"{name} = {getattr(self, name)}"
            try:
                value = cast(arg)
            except ValueError:
                value = None
            if value is None or not ok(value):
                return True, f"/{name}: expected {expected}, got '{arg}'"
            setattr(self, name, value)
            return True, f"({name} = {value})"
        return True, f"unknown command '/{name}'; /help lists them"


def run_chat(session: ChatSession, stdin: TextIO, stdout: TextIO, stderr: TextIO, interactive: bool) -> int:
    """The read-answer loop. Interactive mode shows a banner and a prompt; piped mode prints answers only."""
    if interactive:
        print("alignforge chat: type a message, /help for commands, /quit to leave", file=stderr)
    lineno = 0
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:  # end of input
            break
        lineno += 1
        line = line.rstrip("\r\n")
        found = find_surrogate(line)
        if found is not None:  # a command too: `/system <bad bytes>` would break every later turn
            print(f"error: input line {lineno}: {found.message()}; line ignored", file=stderr)
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            keep_going, message = session.command(line)
            if message:
                print(message, file=stderr)
            if not keep_going:
                break
            continue
        try:
            answer = session.reply(line, warn=stderr)
        except ValueError as e:
            print(f"error: {e}", file=stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C during generation abandons this turn only
            session.history.pop()
            print("(interrupted)", file=stderr)
            continue
        print(f"assistant> {answer}" if interactive else answer, file=stdout, flush=True)
    return 0


def chat(cfg: ChatConfig) -> None:
    from alignforge.models.load import load_for_inference

    from alignforge.config import ConfigError

    found = find_surrogate(cfg.chat.system)
    if found is not None:
        raise ConfigError(f"chat.system: {found.message()}")
    model, tok = load_for_inference(cfg, "chat")
    session = ChatSession(model.eval(), tok, temperature=cfg.chat.temperature, top_p=cfg.chat.top_p,
                          max_tokens=cfg.chat.max_tokens, system=cfg.chat.system, seed=cfg.seed)
    # Bytes that are not UTF-8 reach run_chat as lone surrogates, which it refuses by line; with a
    # strict stdin (some locales, PYTHONIOENCODING) readline itself would raise and end the session.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    run_chat(session, sys.stdin, sys.stdout, sys.stderr, interactive=sys.stdin.isatty())


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import run_stage

    return run_stage("chat", ChatConfig, chat, list(sys.argv[1:] if argv is None else argv), positional="model.init")


__all__ = ["ChatSession", "chat", "main", "run_chat"]
