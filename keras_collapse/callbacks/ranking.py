"""How TLCCallback orders the activations it may linearize next.

A ranking takes the candidate `Pair`s and returns `[(pair, value), ...]`,
safest first; `value` is what the order was decided on (BN score, measured
loss increase, or a random draw).
"""

import numpy as np

from keras_collapse.linearize import linearize_pairs
from keras_collapse.scores.batchnorm import analyze_pairs

RANKINGS = ("batchnorm", "validation", "random")


def rank_by_batchnorm(pairs, analysis=None):
    """Data-free: the BN score (expected relative error), lowest first.
    Layers without statistics are left out. `analysis`: the pairs'
    `BatchNormAnalysis`, if already made."""
    analysis = analyze_pairs(pairs) if analysis is None else analysis
    by_name = {p.activation.name: p for p in pairs}
    return [(by_name[s.name], s.score) for s in analysis.candidates()]


def rank_by_validation(model, pairs, evaluate, base_loss):
    """Measured: the validation loss increase when each candidate alone is
    linearized (then put back), smallest first."""
    ranked = []
    for pair in pairs:
        records = linearize_pairs(model, [pair], constrain=False)
        try:
            loss = evaluate()["loss"]
        finally:
            for record in records:
                record.undo()
        ranked.append((pair, float(loss) - base_loss))
    return sorted(ranked, key=lambda item: np.nan_to_num(item[1], nan=np.inf))


def rank_randomly(pairs, rng):
    """A baseline: the candidates in a random order."""
    order = rng.permutation(len(pairs))
    return [(pairs[i], float(k)) for k, i in enumerate(order)]
