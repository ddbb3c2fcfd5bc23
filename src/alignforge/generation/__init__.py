"""The one sampling engine: batched, KV-cached, temperature / top-k / top-p, token log-probs.

Every stage that samples (SFT eval, collect, PPO/GRPO/RLOO rollouts, RSFT, eval, chat, serve,
Nash-MD) calls :func:`generate` (token ids in) or :func:`generate_text` (strings / chat messages
in). What it guarantees:

* **Log-probs** (design §8): ``log_softmax(logits / T)`` of the token actually sampled, taken
  *before* top-k/top-p truncation, so PPO/GRPO ratios and KL see the model's own distribution.
  Greedy decoding (``temperature=0`` or ``top_k=1``) reports log-probs at ``T = 1``.
* **Padding never changes results**: prompts are left-padded, every row gets its own position ids
  and a key mask, so a prompt decodes the same alone or in a batch.
* **One forward per step for the whole batch**, and finished rows stop costing compute: when at
  most half of the rows in the batch are still running, the batch (and its KV cache) is compacted.
  Repeated prompts (k samples per prompt) are prefilled once and their KV rows copied.
* **Deterministic** for a ``torch.Generator`` or ``SamplingParams.seed``.

Where each part lives (import from ``alignforge.generation``):

* :mod:`.sampling` — one sampling step: :class:`SamplingParams`, :func:`truncate_logits` (top-k /
  top-p), the draw and its log-prob;
* :mod:`.decoders` — the forward passes with a KV cache: a preallocated-cache fast path for
  Llama-family models, the model's own forward for any other causal LM; :func:`fp32_head`;
* :mod:`.engine` — the batched loop (:func:`generate`: padding, prefill, stops, compaction, the
  Nash-MD mixture), :class:`Generation`, and text in / text out (:func:`generate_text`,
  :func:`encode_prompts`).

Measured numbers: ``bench/sampling.py``.
"""

from alignforge.generation.decoders import fp32_head
from alignforge.generation.engine import Generation, encode_prompts, generate, generate_text
from alignforge.generation.sampling import SamplingParams, truncate_logits

__all__ = [
    "SamplingParams",
    "Generation",
    "generate",
    "generate_text",
    "encode_prompts",
    "truncate_logits",
    "fp32_head",
]
