"""Answer *styles*: one answer written three ways, the raw material of a preference cycle.

A style is a closing word put after an answer (``Sure.``, ``Okay.``, ``Right.``). The gold judge
does not care about it (the words are no world values, add no claim and stay far below the
verbosity limits — ``tests/test_world_cycle.py`` checks the rewards are unchanged on every prompt
category but ``format``, whose one-word / uppercase / list instructions an extra word breaks), so
two styles of one answer differ in *taste* only. The ``condorcet`` annotator pool
(:data:`alignforge.world.config.ANNOTATOR_PRESETS`) has three equal groups of annotators with
rotated tastes, s0 ≻ s1 ≻ s2, s1 ≻ s2 ≻ s0 and s2 ≻ s0 ≻ s1: the majority then prefers s0 ≻ s1,
s1 ≻ s2 *and* s2 ≻ s0, a Condorcet cycle no scalar reward can represent (docs/nash.md).

This module reads no gold score: training code and policies may use it (e.g. to write styled
SFT demonstrations, or to count the styles a policy samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from alignforge.data.records import Prompt

#: The closing word of style k (k = 0, 1, 2). At the end, right before the eos a scorer pools at,
#: so a small reward or preference model can see it (an opening word, tried first, was not picked
#: up by the world's tiny-1m scorers from 1,500-3,600 labels: bench/nash_cycle.py).
STYLES: tuple[str, ...] = ("Sure.", "Okay.", "Right.")


def style_of(text: str) -> int | None:
    """The style k whose closing word ``text`` ends with (the whole text, or after a space), else None."""
    s = text.rstrip()
    for k, marker in enumerate(STYLES):
        if s == marker or s.endswith(" " + marker):
            return k
    return None


def unstyled(text: str) -> str:
    """``text`` without its style's closing word (unchanged when it has none)."""
    k = style_of(text)
    return text if k is None else text.rstrip()[:-len(STYLES[k])].rstrip()


def restyle(text: str, k: int) -> str:
    """The same answer in style ``k``: the answer without any previous style, then its closing word."""
    if not 0 <= k < len(STYLES):
        raise ValueError(f"style must be 0..{len(STYLES) - 1}, got {k}")
    body = unstyled(text)
    return f"{body} {STYLES[k]}" if body else STYLES[k]


def styled(policy: Callable[[Prompt], str], k: int) -> Callable[[Prompt], str]:
    """Wrap a policy (``prompt -> response``, e.g. the world's demonstrator): every answer in style ``k``."""
    if not 0 <= k < len(STYLES):
        raise ValueError(f"style must be 0..{len(STYLES) - 1}, got {k}")
    return lambda prompt: restyle(policy(prompt), k)


def style_shares(texts: Iterable[str]) -> list[float]:
    """Shares of styles 0, 1, 2 and of unstyled answers (last), over ``texts``."""
    counts = [0] * (len(STYLES) + 1)
    n = 0
    for t in texts:
        k = style_of(t)
        counts[len(STYLES) if k is None else k] += 1
        n += 1
    return [c / max(n, 1) for c in counts]


def cycle_pairs() -> Sequence[tuple[int, int]]:
    """The three directions of the cycle, (winner, loser) by majority: s0 ≻ s1, s1 ≻ s2, s2 ≻ s0."""
    n = len(STYLES)
    return [(k, (k + 1) % n) for k in range(n)]
