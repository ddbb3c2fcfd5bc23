"""Adapters from public datasets' layouts to our records (design §3), one module per layout.

Each adapter is a function of one raw row (a dict, as read by :func:`records.iter_raw`) that
returns a list of records; :func:`load_dataset_records` reads a file (JSONL/.gz, JSON, Parquet,
or a local Hugging Face ``datasets`` directory), detects the layout from the first row when
asked to, runs the adapter on every row and keeps ``path:line`` on every error.

Three outcomes per row, never a silent one:

- a malformed row raises :class:`RecordError` (field + what was expected; a field that is absent
  reads ``missing field 'x'``); the loader adds the path and line and, under ``on_bad="skip"``,
  skips and counts it instead of stopping;
- a well-formed row that a documented policy leaves out raises :class:`Dropped`; the loader
  counts it per reason in ``ReadReport.dropped``;
- repairs and oddities that keep the row are counted in ``ReadReport.notes`` (the ``notes``
  mapping every adapter accepts).

Layouts (``format=``) and what they become:

=======================  ====================================================================
records                  our own records (:mod:`alignforge.data.records`), which include TRL's
                         language-modelling ``text``, prompt-only and explicit-prompt
                         preference rows (standard and conversational)
hh-rlhf                  ``{"chosen", "rejected"}`` transcripts → Comparison (:mod:`.hh_rlhf`)
alpaca                   ``instruction``/``input``/``output``, or self-instruct ``instances``
                         → Demonstration (:mod:`.alpaca`)
dolly                    ``instruction``/``context``/``response``/``category`` → Demonstration
oasst                    OASST flat message rows (or exported trees) → Demonstrations +
                         Rankings (:mod:`.oasst`)
ultrafeedback            ``instruction``/``prompt`` + scored ``completions`` → Comparisons
                         (+ a Ranking) (:mod:`.ultrafeedback`)
ultrafeedback-binarized  ``prompt`` string, ``chosen``/``rejected`` conversations, scores →
                         Comparison (+ a Demonstration from ``messages``)
messages                 ``messages`` (or ShareGPT ``conversations``) → Demonstration;
                         conversational ``chosen``/``rejected`` lists → Comparison (:mod:`.messages`)
prompt-completion        TRL ``prompt`` + ``completion`` → Demonstration (:mod:`.trl`)
unpaired                 TRL ``prompt`` + ``completion`` + ``label`` → UnpairedFeedback
implicit-prompt          TRL standard ``chosen``/``rejected`` texts sharing their prompt → Comparison
=======================  ====================================================================

Conventions shared by the adapters: a prompt that is a single user turn is stored as a plain
string, anything longer (multi-turn, or with a system message) as a ``messages`` list; text is
stripped of surrounding whitespace; an extra input/context is appended to the instruction after
a blank line (``instruction + "\\n\\n" + input``), which is how it reads in a chat template.
"""

from alignforge.data.formats.alpaca import from_alpaca, from_dolly
from alignforge.data.formats.common import Dropped, Notes, normalize_messages
from alignforge.data.formats.hh_rlhf import from_hh_rlhf, parse_hh_transcript
from alignforge.data.formats.loader import (DEFAULT_KINDS, FORMATS, LAYOUTS, ROW_ADAPTERS, detect_format,
                                            kinds_refusal, load_data_section, load_dataset_records)
from alignforge.data.formats.messages import from_messages
from alignforge.data.formats.oasst import from_oasst_tree, oasst_records
from alignforge.data.formats.trl import from_implicit_prompt, from_prompt_completion, from_unpaired
from alignforge.data.formats.ultrafeedback import (from_ultrafeedback, from_ultrafeedback_binarized,
                                                   ultrafeedback_score)

__all__ = [
    "DEFAULT_KINDS", "FORMATS", "LAYOUTS", "ROW_ADAPTERS", "Dropped", "Notes", "detect_format", "from_alpaca",
    "from_dolly", "from_hh_rlhf", "from_implicit_prompt", "from_messages", "from_oasst_tree", "from_prompt_completion",
    "from_ultrafeedback", "from_ultrafeedback_binarized", "from_unpaired", "kinds_refusal", "load_data_section",
    "load_dataset_records", "normalize_messages", "oasst_records", "parse_hh_transcript", "ultrafeedback_score",
]
