"""Models and tokenizers: everything saved here loads with plain ``transformers``.

- ``tokenizer``: ``train_tokenizer``, ``save_tokenizer``, ``load_tokenizer``, ``ensure_chat_template``
- ``load``: presets (``build_model``), ``load_causal_lm``, ``save_model``, ``frozen_copy``, ``apply_lora``
- ``heads``: reward/value scalar heads (``init_from_causal_lm``, ``sequence_scores``, ``token_scores``)
- ``scoring``: scoring texts with a saved reward model (``score_texts``, ``reward_from_scores``)
- ``tiny``: tiny random Llama / GPT-2 / Qwen2 / GPT-NeoX models for tests
"""

from alignforge.models.heads import (init_from_causal_lm, load_scorer, save_scorer, sequence_scores,
                                     set_reward_normalization, token_scores)
from alignforge.models.load import (PRESETS, apply_lora, build_model, frozen_copy, load_causal_lm,
                                    matmul_params, preset_config, resolve_model_dir, save_model)
from alignforge.models.tokenizer import (ensure_chat_template, load_tokenizer, save_tokenizer,
                                         train_tokenizer)

__all__ = [
    "PRESETS", "apply_lora", "build_model", "ensure_chat_template", "frozen_copy", "init_from_causal_lm",
    "load_causal_lm", "load_scorer", "load_tokenizer", "matmul_params", "preset_config",
    "resolve_model_dir", "save_model", "save_scorer", "save_tokenizer", "sequence_scores",
    "set_reward_normalization", "token_scores", "train_tokenizer",
]
