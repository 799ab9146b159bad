"""Caption metrics: BLEU-4 and CIDEr from pycocoevalcap's scorers (its CIDEr is the CIDEr-D variant: clipped
n-gram counts and a Gaussian length penalty, as the COCO caption evaluation reports it).

pycocoevalcap is the reference implementation of the COCO caption metrics. Its scorers are pure Python; its
PTB tokenizer needs Java, so captions are tokenised here instead: lower-cased, split on anything but letters
(:func:`lbcore.captioning.words`), joined by single spaces. Scores are corpus-level: BLEU-4 over all
hypotheses (closest reference length), CIDEr averaged over items with document frequencies from the references
of the evaluated set. Both are reported x 100, as papers do.
"""

from __future__ import annotations

from collections.abc import Sequence

from lbcore.captioning import words
from lbcore.errors import EvaluationError

__all__ = ["caption_scores", "tokenized"]


def tokenized(text: str) -> str:
    """A caption as the scorers read it: lower-case words separated by single spaces."""
    return " ".join(words(text))


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"bleu4": ..., "cider": ...}`` (x 100) of one hypothesis per item against that item's references."""
    from pycocoevalcap.bleu.bleu import Bleu  # deferred: only captioning evaluation needs it
    from pycocoevalcap.cider.cider import Cider  # deferred: as above

    if len(references) != len(hypotheses) or not hypotheses:
        raise EvaluationError(f"caption metrics: {len(hypotheses)} hypotheses for {len(references)} reference sets")
    if any(not refs for refs in references):
        raise EvaluationError("caption metrics: every item needs at least one reference caption")
    gts = {i: [tokenized(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenized(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": 100.0 * float(bleu[3]), "cider": 100.0 * float(cider)}
