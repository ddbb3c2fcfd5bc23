"""AI feedback (RLAIF, Constitutional AI): the written constitution (:mod:`.constitution`, with the
packaged ``constitution.yaml``) and the AI judge that applies it to a pair of responses (:mod:`.judge`:
any local checkpoint, or an OpenAI-compatible endpoint). Used by ``alignforge rlaif`` and
``alignforge critique``; the world's judging and critique examples render their prompts with the same
builders."""
