"""Tiny bandit-like worlds for the RL stage tests (test_ppo.py, test_reinforce.py, test_nash.py, ...).

A word-level tokenizer with five "arm" words (a … e) besides our special tokens, so a random
tiny Llama starts near-uniform over ~12 tokens and an RL run can find the best arm in seconds.
The rewards are fixed functions of the response token ids, injected with ``reward_fn=``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ARMS = ["a", "b", "c", "d", "e"]
BEST = "c"


def word_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from alignforge.models.tokenizer import ASSISTANT, CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS, SYSTEM, USER

    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + ["[UNK]", "Pick", "one", *ARMS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=END, unk_token="[UNK]",
                                  extra_special_tokens=[SYSTEM, USER, ASSISTANT], clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(tok, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, bos_token_id=None))


def sft_on(model, tok, prompt: str, response: str, steps: int = 60, lr: float = 1e-2) -> None:
    """A few hundred milliseconds of SFT so the policy answers ``response`` (then eos) to ``prompt``."""
    from alignforge.data.batching import encode_example

    ex = encode_example(tok, prompt, response)
    ids = torch.tensor([ex.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ex.input_ids, ex.loss_mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def make_bandit(root: Path, sft_response: str | None = None) -> dict:
    """policy dir + prompts file (+ the tokenizer and arm ids); optionally SFT'd on one answer."""
    from alignforge.models.load import save_model

    tok = word_tokenizer()
    model = tiny_llama(tok)
    if sft_response is not None:
        sft_on(model, tok, "Pick one", sft_response)
    save_model(model, tok, root / "policy")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Pick one"}) + "\n" for _ in range(8)))
    return {"policy": root / "policy", "data": data, "tok": tok, "model": model,
            "arm": {a: tok.convert_tokens_to_ids(a) for a in ARMS}, "eos": tok.eos_token_id}


def bandit_fixture(name: str):
    """A module-scoped ``bandit`` fixture: ``bandit = bandit_fixture("ppo_bandit")`` in a test module."""

    @pytest.fixture(scope="module")
    def bandit(tmp_path_factory):
        return make_bandit(tmp_path_factory.mktemp(name))

    return bandit


# What every RL stage test's config sets: the bandit, one thread on the CPU, one-token answers,
# a constant learning rate without warmup or weight decay, and no saves, evals or logs in between.
RL_BASE = {"runtime.threads": 1, "runtime.progress": False, "runtime.device": "cpu", "sampling.max_new_tokens": 1,
           "train.seq_len": 32, "train.lr": 1e-2, "train.warmup_steps": 0, "train.schedule": "constant",
           "train.weight_decay": 0.0, "train.log_every": 100, "train.save_every": 0, "train.eval_every": 0}


def rl_config(cls: type, bandit: dict, out, stage: dict, **kw):
    """``cls`` loaded from RL_BASE on ``bandit`` writing to ``out``, then ``stage``'s values, then ``kw``'s."""
    from alignforge.config import load_config

    values = {"model.init": bandit["policy"], "data.train": bandit["data"], "out": out, **RL_BASE, **stage, **kw}
    return load_config(cls, None, args(values))


def best_arm_reward(bandit: dict):
    """Reward 1 for the best arm as the (first) response token, 0 otherwise."""
    best = bandit["arm"][BEST]

    def reward(gen) -> torch.Tensor:
        return (gen.response_ids[:, 0] == best).float()

    return reward


def first_token_probs(model, tok) -> torch.Tensor:
    """π(· | "Pick one") at the first response position."""
    from alignforge.data.batching import encode_prompt

    ids = torch.tensor([encode_prompt(tok, "Pick one")])
    with torch.no_grad():
        return torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)


def args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]
