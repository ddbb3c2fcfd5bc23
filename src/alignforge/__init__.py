"""alignforge: the InstructGPT/ChatGPT alignment pipeline, end to end.

pretrain → SFT → feedback → reward model → PPO / DPO / GRPO / RSFT / RLAIF / Nash-MD → evaluate → repeat.
"""

__version__ = "0.1.0"
