"""Rouge-L exactly as the paper reports it (docs/method.md §4).

Google's ``rouge_score`` with ``RougeScorer(['rougeL'], use_stemmer=True)``, the F-measure, the maximum over
the references, ×100; a corpus score is the mean over examples.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        from ..errors import MinillmError

        raise MinillmError("Rouge-L needs the 'rouge-score' package: pip install rouge-score") from exc
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """Rouge-L F-measure ×100 of one prediction, the best over its references."""
    if isinstance(references, str):
        references = [references]
    scorer = _scorer()
    return 100.0 * max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references), default=0.0)


def corpus_rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    if len(predictions) != len(references):
        raise ValueError("one list of references per prediction")
    if not predictions:
        return 0.0
    return sum(rouge_l(p, r) for p, r in zip(predictions, references)) / len(predictions)
