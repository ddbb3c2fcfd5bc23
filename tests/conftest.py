"""Suite-wide settings.

``runtime.precision: auto`` picks bf16 autocast on CPUs with AMX-BF16 and fp32 elsewhere
(alignforge.train.loop.cpu_has_fast_bf16). The suite pins auto to fp32 so that one set of
expected values and tolerances holds on every CPU it runs on (AMD and Intel runners alike);
the bf16 paths are tested where a test asks for ``precision: bf16`` explicitly, which runs on
any CPU (test_precision.py). Set before any test module imports alignforge, and inherited by the
CLI and torchrun subprocesses the tests start.
"""

import os

os.environ.setdefault("ALIGNFORGE_AUTO_PRECISION", "fp32")
