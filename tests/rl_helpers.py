"""Tiny bandit-like worlds for the PPO / REINFORCE tests (shared by test_ppo.py and test_reinforce.py).

A word-level tokenizer with five "arm" words (a … e) besides our special tokens, so a random
tiny Llama starts near-uniform over ~12 tokens and an RL run can find the best arm in seconds.
The rewards are fixed functions of the response token ids, injected with ``reward_fn=``.
"""

from __future__ import annotations

import json
from pathlib import Path

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
