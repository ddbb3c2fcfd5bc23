"""Serving a checkpoint: ``alignforge serve`` (:mod:`.serve`, an OpenAI-compatible HTTP server; the
request side in :mod:`.openai_requests`, request batching in :mod:`.batching`) and ``alignforge chat``
(:mod:`.chat`, a terminal chat). Both sample with the one engine, :mod:`alignforge.generation`."""
