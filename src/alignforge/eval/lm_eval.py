"""EleutherAI ``lm-eval-harness`` adapter: evaluate an alignforge checkpoint on any lm-eval task.

    pip install -e ".[eval]"
    python -m alignforge.eval.lm_eval run --model alignforge --model_args path=runs/world/sft \\
        --tasks my_task --include_path my_tasks/ --output_path results/

``python -m alignforge.eval.lm_eval`` is the harness's own command line (``lm-eval ...``) with this
module imported first: the harness discovers models only through its registry and has no plugin
hook, so a plain ``lm-eval --model alignforge`` does not know the name. From Python, importing
this module registers it: ``import alignforge.eval.lm_eval; lm_eval.simple_evaluate(model=
"alignforge", model_args="path=runs/world/sft", ...)``.

``model_args``: ``path`` (a stage folder or HF model directory), ``batch_size`` (default 16),
``device`` (auto: cuda when visible, else cpu), ``max_length`` (default: the model's positions), ``seed`` (sampled generation).

The harness's LM interface, implemented on alignforge's components:

* ``loglikelihood(context, continuation)`` → (sum of the continuation tokens' log-probs, whether
  each is the greedy token). One plain forward per batch of right-padded rows. The text is
  tokenised as ``context + continuation`` and split where ``context`` alone ends, with trailing
  spaces of the context moved to the continuation (the harness's own convention), so the scored
  tokens are the ones the model would see in running text.
* ``loglikelihood_rolling(text)`` → the whole text's log-likelihood, in the harness's disjoint
  windows of at most ``max_length`` tokens (every token predicted once, each window with as much
  context as fits).
* ``generate_until(context, {until, max_gen_toks, do_sample, temperature})`` → text from the one
  sampling engine (``alignforge.generation``, greedy unless ``do_sample``), cut at the first
  ``until`` string; requests with the same settings are batched.

Every sequence starts with a prefix token — BOS, or EOS for tokenizers without one (alignforge's
pretraining stream separates documents with EOS) — so an empty context is well defined.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

__all__ = ["AlignforgeLM"]


@register_model("alignforge")
class AlignforgeLM(LM):
    def __init__(self, path: str | None = None, pretrained: str | None = None, batch_size: int | str = 16,
                 device: str | None = "auto", max_length: int | None = None, seed: int = 0, max_gen_toks: int = 256,
                 **unused: Any):
        super().__init__()
        from alignforge.models.load import load_causal_lm

        path = path or pretrained
        if not path:
            raise ValueError("alignforge lm-eval model: model_args needs path=<stage folder or HF model dir>")
        if unused:
            raise ValueError(f"alignforge lm-eval model: unknown model_args {sorted(unused)}; valid: path, "
                             "batch_size, device, max_length, seed, max_gen_toks")
        if str(device or "auto").startswith("cuda") and not torch.cuda.is_available():
            # The harness passes its own default (cuda) when --device is not given.
            print(f"alignforge lm-eval model: device {device!r} requested but no GPU is visible; using cpu",
                  file=sys.stderr)
            device = "cpu"
        device = "cuda" if device in (None, "auto") and torch.cuda.is_available() else (device or "cpu")
        device = "cpu" if device == "auto" else device
        self.model, self.tokenizer = load_causal_lm(path, device=device)
        self.model.eval()
        self._device = torch.device(device)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 16
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        self.max_length = int(max_length or limit or 2048)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.path = str(path)
        tok = self.tokenizer
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if prefix is None:
            raise ValueError(f"alignforge lm-eval model: the tokenizer of {path} has neither BOS nor EOS")
        self.prefix_token_id = int(prefix)

    # ------------------------------------------------------------------ tokenisation

    def tok_encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def split_encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) such that context + continuation = the ids of the whole
        text: tok(a) + tok(b) ≠ tok(a + b) in BPE, so the whole text is tokenised once."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # " world" is one token in running text; "hello " + "world" would not be
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = [self.prefix_token_id] + self.tok_encode(context)
        n_ctx = len(ctx) - 1
        if whole[:n_ctx] != ctx[1:]:  # a merge across the boundary: fall back to separate encodings
            return ctx, self.tok_encode(continuation)
        return ctx, whole[n_ctx:]

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (context ids, continuation ids): the continuation's summed log-prob given the
        context, and whether every continuation token is the argmax. Rows longer than
        ``max_length`` keep their last ``max_length`` tokens (the far context is dropped)."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"loglikelihood request {i}: the continuation has no tokens")
            if len(cont) > self.max_length:
                raise ValueError(f"loglikelihood request {i}: continuation of {len(cont)} tokens is longer than "
                                 f"max_length={self.max_length}")
            ids = (ctx + cont)[-(self.max_length + 1):]  # the last token is only predicted, never input
            rows.append((i, ids[:-1], ids[-len(cont):]))
        rows.sort(key=lambda r: -len(r[1]))  # similar lengths together: less padding
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.prefix_token_id
        for j in range(0, len(rows), self.batch_size):
            chunk = rows[j:j + self.batch_size]
            L = max(len(inp) for _, inp, _ in chunk)
            ids = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for k, (_, inp, _) in enumerate(chunk):  # right padding: positions 0.. are the real ones
                ids[k, :len(inp)] = torch.tensor(inp)
                mask[k, :len(inp)] = 1
            logits = self.model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device)).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            for k, (i, inp, target) in enumerate(chunk):
                n = len(target)
                lp = logp[k, len(inp) - n:len(inp)]  # the positions that predict the continuation
                tgt = torch.tensor(target, device=lp.device)
                out[i] = (float(lp.gather(1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.split_encode(*req.args) for req in requests]
        results = self.score_tokens(pairs)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            windows = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for w in windows:
                ctx, cont = make_disjoint_window(w)
                pairs.append((list(ctx), list(cont)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, self.score_tokens(pairs)):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from alignforge.data.batching import pad_id_of
        from alignforge.generation import SamplingParams, generate

        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        params_of: dict[tuple, SamplingParams] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            params = self._sampling_params(dict(kwargs or {}), i)
            key = (params.temperature, params.top_p, params.top_k, params.max_new_tokens, params.stop_strings)
            groups.setdefault(key, []).append(i)
            params_of[key] = params
        gen_rng = torch.Generator(device=self._device).manual_seed(self.seed)
        for key, idx in groups.items():
            params = params_of[key]
            budget = max(self.max_length - params.max_new_tokens, 1)
            prompts = [([self.prefix_token_id] + self.tok_encode(requests[i].args[0]))[-budget:] for i in idx]
            for j in range(0, len(idx), self.batch_size):
                g = generate(self.model, prompts[j:j + self.batch_size], params,
                             eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad_id_of(self.tokenizer),
                             tokenizer=self.tokenizer, generator=gen_rng)
                for i, text in zip(idx[j:j + self.batch_size], g.texts or []):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _sampling_params(self, kwargs: dict[str, Any], i: int):
        from alignforge.generation import SamplingParams

        until = kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"generate_until request {i}: 'until' must be a string or a list of strings, "
                             f"got {until!r}")
        max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks)))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        top_p = float(kwargs.pop("top_p", 1.0))
        top_k = int(kwargs.pop("top_k", 0) or 0)
        if kwargs:
            print(f"alignforge lm-eval model: ignoring generation settings {sorted(kwargs)}", file=sys.stderr)
        if not do_sample:
            temperature = 0.0
        return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                              max_new_tokens=min(max_new, self.max_length - 1),
                              stop_strings=tuple(u for u in until if u))

    # ------------------------------------------------------------------ chat (``--apply_chat_template``)

    @property
    def tokenizer_name(self) -> str:
        return self.path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation in the model's chat template (the one SFT trained on), as text."""
        from alignforge.data.batching import _ensure_template

        _ensure_template(self.tokenizer)
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)


def main(argv: Sequence[str] | None = None) -> None:
    """The harness's CLI with the ``alignforge`` model registered (this module is imported)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
