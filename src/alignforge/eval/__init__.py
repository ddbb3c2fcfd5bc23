"""Evaluation protocol (design §8): one component, reused by every stage that reports results.

* :mod:`alignforge.eval.metrics` — bootstrap CIs, paired differences, win-rate (ties = ½),
  share of the SFT→oracle gap closed, length-controlled reward. Plain numbers in, no models.
* :mod:`alignforge.eval.kl` — KL(π‖π_ref) on responses sampled from π.
* :mod:`alignforge.eval.scorers` — reward-model scorer, n samples + scores, best-of-n.
* :mod:`alignforge.eval.protocol` — ``evaluate_policy`` / ``evaluate_reference`` / ``compare`` /
  ``markdown`` with the world's gold judge.
* :mod:`alignforge.eval.oracle` — the gold judge as a scorer (oracle ablations), and the runner
  that injects it into ``alignforge rsft``.
* :mod:`alignforge.eval.lm_eval` — the ``lm-eval-harness`` adapter (model name ``alignforge``;
  needs the ``[eval]`` extra).
* :mod:`alignforge.eval.report` — ``report.html`` from run folders.

Only ``protocol`` and ``oracle`` read the gold judge. This ``__init__`` imports nothing, so that
training code importing ``eval.scorers`` / ``eval.kl`` / ``eval.metrics`` never loads the judge.
"""
