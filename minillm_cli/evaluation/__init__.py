"""Evaluation: suites as plugins, the paper's Rouge-L protocol, other scores, and the reports.

Modules, one job each: ``base`` (the Evaluator interface), ``suites`` (the instruction suites and their data),
``protocol`` (sample per seed, score, mean ± std), ``rouge`` (Rouge-L as the paper computes it), ``metrics``
(exact match, length buckets, Dist-4, test loss), ``select`` (``--suite``/``--set`` to evaluators),
``provenance`` (weights hash), ``reports`` (table, JSON, Markdown, PNG), ``validation`` (suites during
``minillm distill``), ``analyses`` (exposure bias, calibration, judge as evaluators) over ``exposure``,
``calibration`` and ``judge``. The ``minillm eval`` run is ``runs/eval.py``, its command line ``cli/eval.py``.
"""

from .base import EvalContext, Evaluator, SuiteResult

__all__ = ["EvalContext", "Evaluator", "SuiteResult"]
