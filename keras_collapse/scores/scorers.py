"""Scorers: how a linearization callback orders its candidates.

A scorer is a callable `scorer(context, pairs) -> [Score, ...]`, safest
first, that knows nothing of the schedule (the policy lives in
`callbacks.engine`, the action in `linearize` / `ramp`). `pairs` are the
candidate `Pair`s (activation + the BatchNormalization feeding it, if any);
`context` (a `callbacks.context.DecisionContext`) gives what a scorer may
need: the model, the fixed data sample, `evaluate()` on the labelled sample,
`loss_if_linearized()`, `statistics()` over the data sample, a seeded `rng`,
a `progress` bar.

Any callable returning `[(pair, value), ...]` works too (lowest value
first): the OFF channels to zero are then TLC's, from the BatchNorm.
"""

import dataclasses

import numpy as np

from keras_collapse.checks import check_number
from keras_collapse.scores.batchnorm import analyze_pairs
from keras_collapse.scores.batchnorm import layer_states


@dataclasses.dataclass
class Score:
    """One candidate's score.

    Attributes:
        pair: the candidate `Pair`.
        value: float, what the order was decided on (lower is safer).
        off: per-channel bool array of the channels to zero when it is
            linearized, or None to only lock it.
    """

    pair: object
    value: float
    off: np.ndarray | None = None


class Scorer:
    """Base class: subclasses implement `__call__`.

    Attributes:
        name: str, the ranking's name in `events` ("batchnorm").
        label: str, what the value is, in verbose lines ("BN score").
        needs: tuple of "data" (unlabelled inputs for statistics) and/or
            "labels" (a labelled sample for `evaluate()`).
        batchnorm_only: bool, whether only BN-paired activations can be
            scored.
    """

    name = "custom"
    label = "score"
    needs = ()
    batchnorm_only = False

    def __call__(self, context, pairs):
        raise NotImplementedError

    def also_take(self, ranked):
        """Other candidates to linearize with the first, at the same
        decision (none by default)."""
        return []


def batchnorm_off(pair):
    """TLC's OFF channels of a paired activation (from its BatchNorm), or
    None when it has no usable BN."""
    if pair.batchnorm is None:
        return None
    states = layer_states(pair, confidence=0.95)
    return None if states.reason else states.off


# A data-free score at least this share of what a layer about which nothing
# is known scores (an untrained BN: 0.399 for a ReLU) says nothing either.
UNINFORMED_SHARE = 0.9


class BatchNormScorer(Scorer):
    """Data-free TLC: the BN score (expected relative error of forcing every
    channel OFF where the analysis calls it OFF, ON elsewhere), lowest first;
    OFF channels are the analysis' own (`P(OFF) >= 0.95`). Layers without BN
    statistics are left out, and so is, at this decision, a layer whose
    score is within 10 % of what a layer about which nothing is known scores
    (`UNINFORMED_SHARE`): its BN does not tell its channels' states."""

    name = "batchnorm"
    label = "BN score"
    batchnorm_only = True

    def __call__(self, context, pairs):
        analysis = analyze_pairs(pairs)
        by_name = {p.activation.name: p for p in pairs}
        for states in analysis:
            if states.reason and states.reason.startswith("non-finite"):
                context.skip(states.name, states.reason)
        candidates = analysis.candidates()
        ranked = [
            Score(by_name[s.name], s.score, s.off)
            for s in candidates
            if s.score < UNINFORMED_SHARE * s.uninformed
        ]
        self.note = None
        if candidates and not ranked:
            low = min(s.score for s in candidates)
            self.note = (
                f"every candidate's BatchNorm leaves its channels' states unknown "
                f"(lowest score {low:.3g}, within 10 % of an untrained BN's "
                f"{candidates[0].uninformed:.3g}); pass `data=x_sample` to measure "
                "them, or `validation_data=(x, y)` to rank by measured loss"
            )
        return ranked


class GaussianScorer(Scorer):
    """TLC fed with data: the Gaussian ON/OFF model with each channel's
    measured mean and std (`ActivationStatistics.gaussian_states`), so
    activations without a BatchNormalization get scores too."""

    name = "statistics"
    label = "measured score"
    needs = ("data",)

    def __call__(self, context, pairs):
        analysis = context.statistics(pairs).gaussian_states()
        return [Score(pair, s.score, s.off) for pair, s in _in_pool(pairs, analysis)]


class EntropyScorer(Scorer):
    """EASIER: the ON/OFF entropy over the data sample, lowest first; the
    channels never ON in the sample are zeroed (this trusts the sample).
    Every activation whose entropy is (numerically) zero goes along with the
    first.

    Args:
        zero_entropy: float >= 0, the entropy (bits) at or below which a
            layer counts as linear on the sample. Defaults to `1e-6`.
    """

    name = "entropy"
    label = "entropy"
    needs = ("data",)

    def __init__(self, zero_entropy=1e-6):
        # Checked here, where EASIER, NEPENTHE and the joint prior all pass it.
        self.zero_entropy = check_number(
            "zero_entropy", zero_entropy, 0, what="an entropy in bits"
        )

    def __call__(self, context, pairs):
        stats = context.statistics(pairs)
        return [
            Score(pair, s.entropy, s.never_on) for pair, s in _in_pool(pairs, stats)
        ]

    def also_take(self, ranked):
        return [s for s in ranked[1:] if s.value <= self.zero_entropy]


class LossScorer(Scorer):
    """TLC's measured ranking: the loss increase on the labelled sample when
    each candidate alone is linearized (then put back), smallest first.

    Args:
        multi_removal: bool, also take every other candidate whose loss does
            not rise (TLC's multi-removal). Defaults to `False`.
    """

    name = "validation"
    label = "loss increase"
    needs = ("labels",)

    def __init__(self, multi_removal=False):
        self.multi_removal = multi_removal

    def __call__(self, context, pairs):
        base = context.evaluate()["loss"]
        ranked = []
        bar = context.progress(len(pairs), "measuring candidates")
        for i, pair in enumerate(pairs):
            off = batchnorm_off(pair)
            loss = context.loss_if_linearized(pair, off)
            ranked.append(Score(pair, float(loss) - base, off))
            bar.update(i + 1)
        return sorted(ranked, key=lambda s: np.nan_to_num(s.value, nan=np.inf))

    def also_take(self, ranked):
        if not self.multi_removal:
            return []
        return [s for s in ranked[1:] if s.value <= 0.0]


class RandomScorer(Scorer):
    """A baseline: the candidates in a random order (the callback's seeded
    `rng`); OFF channels are TLC's where a BatchNorm says."""

    name = "random"
    label = "random rank"

    def __call__(self, context, pairs):
        order = context.rng.permutation(len(pairs))
        return [
            Score(pairs[i], float(k), batchnorm_off(pairs[i]))
            for k, i in enumerate(order)
        ]


class _FunctionScorer(Scorer):
    """A user's callable `(context, pairs) -> [(pair, value), ...]`."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self.label = getattr(fn, "label", self.name)
        self.needs = tuple(getattr(fn, "needs", ()))

    def __call__(self, context, pairs):
        ranked = []
        for item in self.fn(context, pairs):
            if isinstance(item, Score):
                ranked.append(item)
                continue
            pair, value = item
            ranked.append(Score(pair, float(value), batchnorm_off(pair)))
        return sorted(ranked, key=lambda s: np.nan_to_num(s.value, nan=np.inf))

    def also_take(self, ranked):
        take = getattr(self.fn, "also_take", None)
        return take(ranked) if take is not None else []


def as_scorer(scorer):
    """A `Scorer` from a `Scorer` or a plain callable."""
    if isinstance(scorer, Scorer):
        return scorer
    if callable(scorer):
        return _FunctionScorer(scorer)
    raise ValueError(
        "Expected a scorer: a `keras_collapse.scores.Scorer` or a callable "
        f"`(context, pairs) -> [(pair, value), ...]`. Received: {scorer!r}"
    )


def _in_pool(pairs, measured):
    """`(pair, state)` for each of `measured.candidates()` in `pairs`: the
    statistics are measured once per decision, and a retry (after a refused
    change, the weights restored) scores fewer pairs on them."""
    by_name = {p.activation.name: p for p in pairs}
    return [(by_name[s.name], s) for s in measured.candidates() if s.name in by_name]
