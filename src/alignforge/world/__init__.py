"""The embedded synthetic assistant world (design §4): what lets alignment be *measured* on a CPU.

Public API::

    from alignforge.world import WorldConfig, build_world
    world = build_world(WorldConfig(seed=0))      # facts, corpus, prompts by split, demos
    world.prompts["test"], world.demos, world.corpus, world.oracle(prompt)

    from alignforge.world.judge import judge      # gold judge: evaluation / annotators only
    from alignforge.world.annotators import AnnotatorPool
    from alignforge.world.demonstrator import Demonstrator
    from alignforge.world.policies import reference_policy   # oracle, demonstrator, random

This package ``__init__`` deliberately does not import the gold judge or the annotators, so
training code may use the world's prompts and corpus without touching them (design §8).
"""

from alignforge.world.config import ANNOTATOR_PRESETS, AnnotatorPoolConfig, WorldConfig
from alignforge.world.core import World, build_world, load_world_config
from alignforge.world.tasks import CATEGORIES, Task

__all__ = ["ANNOTATOR_PRESETS", "AnnotatorPoolConfig", "CATEGORIES", "Task", "World", "WorldConfig",
           "build_world", "load_world_config"]
