"""How one NEPENTHE round shares its pruning budget between layers: a
softmax over inverse scores, capped per layer, rounded to whole counts."""

import collections.abc

import numpy as np

from keras_collapse.checks import check_int
from keras_collapse.checks import is_int


def allocate_budget(scores, remaining, budget):
    """Shares one NEPENTHE round's pruning budget between layers.

    Layer l gets the share `softmax(S / s)_l` of `budget`, with
    `S = sum_k s_k`: the lower its score (entropy), the more it is pruned.
    A share is capped at what the layer has left (`remaining[l]`); the
    excess goes to the layers not capped, in proportion to their softmax
    weights, until no share exceeds its cap. The real shares are rounded by
    largest remainder (ties to the lower index) without passing a cap, so the
    counts sum to exactly `min(budget, sum(remaining))`.

    A zero score (entropy 0: the activation is always ON or OFF) would get
    an infinite weight; such a layer is to be linearized, not pruned, so the
    caller leaves it out. Scores must be finite and > 0.

    Args:
        scores: dict name -> score, or a 1-D sequence of scores (> 0).
        remaining: the same keys / length: ints >= 0, weights each layer
            can still lose.
        budget: int >= 0, weights to prune this round (NEPENTHE:
            the prune fraction times `sum(remaining)`, rounded).

    Returns:
        dict name -> int for a dict `scores`, else an int64 array.

    Raises:
        ValueError: for non-positive or non-finite scores, negative or
            non-integer `remaining` / `budget`, or mismatched keys / lengths.

    Example:

    >>> kc.allocate_budget({"a": 1.0, "b": 2.0}, {"a": 100, "b": 100}, 10)
    {'a': 8, 'b': 2}
    """
    keys = None
    if isinstance(scores, collections.abc.Mapping):
        keys = list(scores)
        if not isinstance(remaining, collections.abc.Mapping) or set(remaining) != set(
            keys
        ):
            raise ValueError(
                f"`remaining` must be a dict with the keys of `scores` "
                f"({sorted(keys)}). Received: {remaining!r}"
            )
        s = np.array([scores[k] for k in keys], dtype="float64")
        caps = [remaining[k] for k in keys]
    else:
        s = np.asarray(scores, dtype="float64")
        caps = list(np.asarray(remaining).ravel()) if np.ndim(remaining) else None
        if s.ndim != 1 or caps is None or len(caps) != len(s):
            raise ValueError(
                "`scores` and `remaining` must be 1-D of the same length. "
                f"Received: scores={scores!r}, remaining={remaining!r}"
            )
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(
            "Expected finite scores > 0 (leave out layers of zero entropy: "
            f"they are linearized, not pruned). Received: {scores!r}"
        )
    if any(not is_int(c) or c < 0 for c in caps):
        raise ValueError(
            f"`remaining` must hold ints >= 0. Received: remaining={remaining!r}"
        )
    check_int("budget", budget, 0, what="the weights to prune this round")
    caps = np.array(caps, dtype=np.int64)
    counts = _allocate(s, caps, int(budget))
    if keys is None:
        return counts
    return {k: int(c) for k, c in zip(keys, counts)}


def _allocate(s, caps, budget):
    target = min(budget, int(caps.sum()))
    shares = np.zeros(len(s))
    if target == 0:
        return np.zeros(len(s), np.int64)
    logits = s.sum() / s
    free = np.ones(len(s), bool)
    left = float(target)
    while True:
        z = logits[free] - logits[free].max()  # stable softmax over the free
        weights = np.exp(z) / np.exp(z).sum()
        share = left * weights
        over = share > caps[free] * (1 + 1e-12) + 1e-9  # not by round-off
        if not over.any():
            shares[free] = share
            break
        index = np.flatnonzero(free)[over]
        shares[index] = caps[index]
        left -= float(caps[index].sum())
        free[index] = False
        if not free.any():
            break
    counts = np.minimum(np.floor(shares).astype(np.int64), caps)
    short = target - int(counts.sum())
    if short > 0:
        fraction = np.where(counts < caps, shares - counts, -np.inf)
        order = np.argsort(-fraction, kind="stable")
        counts[order[:short]] += 1
    return counts
