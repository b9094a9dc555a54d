"""Gradual linearization: an activation eased into the identity over many
training steps instead of switched at once.

A sudden switch (lock the activation, zero its OFF channels) shifts every
later layer's input in one step; the network then needs epochs to recover
and a guard may reject a change it would have absorbed. A ramp moves the
same way a LayerCollapse regularizer does, but on a schedule: at progress t
(0 to 1) the blend slope is `alpha_0 + (1 - alpha_0) t` and each OFF
channel's BatchNormalization gamma and beta are their start values times
`1 - t`; the rest of the network trains meanwhile. At t = 1 the layer is
linearized exactly as `linearize` does (locked, OFF channels held at zero).
"""

import keras
import numpy as np

from keras_collapse.actions.linearize import linearize_pairs
from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.collapsible import sync_training_state


class Ramp:
    """Eases `scores` (`Score`s: pair, OFF channels) toward linear.

    Args:
        model: the training `keras.Model`.
        scores: list of `Score`, what to linearize and which channels to
            zero.
        steps: int >= 1, the training steps over which to ease them; 0
            linearizes at once.
        updates: int, how many times the weights are moved along the way
            (each move costs a state sync on JAX). Defaults to `16`.
    """

    def __init__(self, model, scores, steps, updates=16):
        self.model = model
        self.scores = list(scores)
        self.steps = int(steps)
        self.updates = max(1, min(int(updates), max(self.steps, 1)))
        self.records = None
        self._step = 0
        self._level = 0
        sync_training_state(model)
        self._start = []
        for score in self.scores:
            layer, bn = score.pair.activation, score.pair.batchnorm
            alpha = np.asarray(keras.ops.convert_to_numpy(layer.alpha))
            faded = []
            if score.off is not None and bn is not None and bn.scale:
                for variable in [bn.gamma] + ([bn.beta] if bn.center else []):
                    faded.append((variable, keras.ops.convert_to_numpy(variable)))
            self._start.append((layer, alpha, faded, score.off))
        if self.steps == 0:
            self.finish()

    @property
    def done(self):
        return self.records is not None

    def step(self):
        """Advances by one training step; linearizes at the end."""
        if self.done:
            return
        self._step += 1
        level = self._step * self.updates // self.steps
        if self._step >= self.steps:
            self.finish()
        elif level > self._level:
            self._level = level
            self._move(self._step / self.steps)

    def _move(self, t):
        sync_training_state(self.model)
        for layer, alpha, faded, off in self._start:
            layer.alpha.assign((alpha + (1.0 - alpha) * t).astype(alpha.dtype))
            for variable, start in faded:
                now = keras.ops.convert_to_numpy(variable)
                variable.assign(np.where(off, start * (1.0 - t), now).astype(now.dtype))

    def preview(self):
        """Applies the final state at once, free to train (no constraint),
        and returns the records that undo it: what the change will be."""
        sync_training_state(self.model)
        return linearize_pairs(
            self.model,
            [s.pair for s in self.scores],
            [s.off for s in self.scores],
            constrain=False,
        )

    def finish(self):
        """Linearizes what is left at once (also when training stops early)."""
        if self.done:
            return self.records
        self.records = linearize_pairs(
            self.model,
            [s.pair for s in self.scores],
            [s.off for s in self.scores],
        )
        if any(r.off for r in self.records):
            rebuild_train_function(self.model)
        return self.records
