"""What the joint method sets up at train begin, before any change: the
candidate gates (or a set chosen in a fit this one resumes), the budget
they are pulled to, and the prior's ranks."""

import numpy as np

from keras_collapse.callbacks.budget import Budget
from keras_collapse.callbacks.context import DecisionContext
from keras_collapse.callbacks.joint_gates import CHOSEN
from keras_collapse.callbacks.joint_gates import PINNED
from keras_collapse.collapsible import sync_training_state
from keras_collapse.scores.pairs import find_pairs
from keras_collapse.scores.scorers import BatchNormScorer
from keras_collapse.scores.scorers import EntropyScorer
from keras_collapse.scores.scorers import GaussianScorer
from keras_collapse.scores.scorers import as_scorer


class JointPreparation:
    """The set-up of `JointLinearizationCallback` at train begin."""

    def _candidate_layers(self):
        pairs = find_pairs(self._student)
        if not pairs:
            raise ValueError(
                f"{self.method} found no collapsible activation in model "
                f"'{self._student.name}'. Convert its activations first: "
                "`model = keras_collapse.make_collapsible(model, "
                "trainable_alpha=True)` (then compile and fit that model)."
            )
        names = [p.activation.name for p in pairs]
        unknown = sorted(set(self.candidates or ()) - set(names))
        if unknown:
            raise ValueError(
                "`candidates` names layers that are not collapsible activations "
                f"of model '{self._student.name}': {unknown}. Available: {names}"
            )
        allowed = set(self.candidates) if self.candidates is not None else None
        layers = [
            p.activation
            for p in pairs
            if (allowed is None or p.activation.name in allowed)
            and (not p.activation.is_locked or p.activation.alpha_range == CHOSEN)
            and not (p.activation.alpha_range is None and p.activation.is_linear)
        ]
        self._decided = bool(layers) and all(
            layer.alpha_range in (CHOSEN, PINNED) for layer in layers
        )
        if not self._decided:  # a set chosen before is not chosen again
            layers = [layer for layer in layers if not layer.is_locked]
        if not layers:
            raise ValueError(
                f"{self.method}: every collapsible activation of model "
                f"'{self._student.name}' is linear already; nothing to learn."
            )
        return layers

    def _check_trainable(self):
        trainable = {id(v) for v in self._trainer.trainable_variables}
        frozen = [
            layer.name for layer in self._layers if id(layer.alpha) not in trainable
        ]
        if frozen:
            raise ValueError(
                f"{self.method} trains each activation's slope as a gate, but "
                f"the slopes of {frozen[:5]}{' ...' if len(frozen) > 5 else ''} "
                "are not trainable variables of the compiled model. Convert with "
                "`keras_collapse.make_collapsible(model, trainable_alpha=True)` "
                "(or use `keras_collapse.collapse`, which does it) and compile "
                "that model."
            )

    def _budget_setup(self):
        if self._decided:  # nothing left to choose: a fit resumed after the set
            self.budget = None
            return
        sync_training_state(self._trainer)
        try:
            self.budget = Budget.plan(
                self._student,
                [layer.name for layer in self._layers],
                self.objective,
                self.target,
                self.exact,
                self.cost_model,
            )
        except ValueError as e:
            raise ValueError(f"{self.method}: {e}") from None
        kept = set(self.budget.names)
        self._layers = [layer for layer in self._layers if layer.name in kept]

    def _priors(self):
        """Per candidate, the prior's rank in [0, 1] (0 safest), or None."""
        if self.prior is None or self._decided:
            return None
        if self.prior == "tlc":
            scorer = GaussianScorer() if self._sample is not None else BatchNormScorer()
        elif self.prior == "easier":
            scorer = EntropyScorer()
        else:
            scorer = as_scorer(self.prior)
        pairs = [p for p in find_pairs(self._student) if p.activation in self._layers]
        context = DecisionContext(
            self._student,
            trainer=self._trainer,
            data=self._sample,
            rng=np.random.default_rng(self.seed),
            batch_size=self.batch_size,
            verbose=self.verbose,
        )
        sync_training_state(self._trainer)
        ranked = scorer(context, pairs)
        order = {s.pair.activation.name: i for i, s in enumerate(ranked)}
        last = max(len(ranked) - 1, 1)
        # Unscored candidates rank last.
        return np.array(
            [order.get(layer.name, last) / last for layer in self._layers], float
        )
