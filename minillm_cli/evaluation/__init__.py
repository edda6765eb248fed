"""Evaluation: suites as plugins, the paper's Rouge-L protocol, other scores, and the reports.

Modules, one job each: ``base`` (the Evaluator interface), ``suites`` (the instruction suites and their data),
``protocol`` (sample per seed, score, mean ± std), ``metrics`` (exact match, length buckets, Dist-4, test
loss), ``select`` (``--suite``/``--set`` to evaluators), ``provenance`` (weights hash), ``reports`` (table,
JSON, Markdown, PNG), ``eval_run`` (the ``minillm eval`` run), ``command`` (its command line), ``validation``
(suites during ``minillm distill``), ``analyses`` (exposure bias, calibration, judge as evaluators).
"""

from .base import EvalContext, Evaluator, SuiteResult

__all__ = ["EvalContext", "Evaluator", "SuiteResult"]
