"""``alignforge data <command>``: tools for dataset files (``inspect``)."""

from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: alignforge data inspect FILE [--format F] [--tokenizer DIR] [--seq-len N] [--kind K] [--examples N]
                               [--limit N] [--json]

commands:
  inspect    what a stage will see: layout, records per kind, drops and notes, the first examples
             through the chat template with the trained-on tokens marked, token lengths, truncation"""


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] != "inspect":
        print(f"alignforge data: unknown command {argv[0]!r}; expected 'inspect'\n\n{USAGE}", file=sys.stderr)
        return 2
    from alignforge.data.inspect import main as inspect_main

    return inspect_main(argv[1:])
