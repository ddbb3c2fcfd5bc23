"""Serving a checkpoint: ``alignforge serve`` (:mod:`.serve`, an OpenAI-compatible HTTP server with
request batching) and ``alignforge chat`` (:mod:`.chat`, a terminal chat). Both sample with the one
engine, :mod:`alignforge.generation`."""
