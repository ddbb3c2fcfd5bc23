"""The serving engine's batching: one worker thread turns waiting requests (:class:`Job`) into as few
:func:`alignforge.generation.generate` calls as it can.

The worker takes the first waiting job, waits ``serve.batch_window_ms`` for more (or until
``serve.max_batch`` sequences are waiting), groups the jobs by sampling parameters and runs one
``generate`` call per group; while a batch runs, new requests queue up and form the next batch.
A request with a ``seed`` (and temperature > 0) runs in a group of its own: the engine's draws
depend on the batch it is in, so batching it with strangers would break "same seed, same answer".
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator

from alignforge.generation import SamplingParams, generate


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
