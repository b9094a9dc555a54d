"""What the greedy engine sets up at `on_train_begin`, before any change:
the candidates, the fixed samples (drawn and checked here), the BatchNorm
re-estimation and the pre-check; and whether it can act at all (a scorer
with something to score, a merge unit that buys something)."""

import functools
import warnings

from keras_collapse import data as data_lib
from keras_collapse.actions.recalibrate import BatchNormRecalibrator
from keras_collapse.callbacks.precheck import Precheck
from keras_collapse.callbacks.selection import units_of
from keras_collapse.graph import Graph
from keras_collapse.scores.pairs import find_pairs


class Preparation:
    """The set-up of `LinearizationCallback` at train begin."""

    def _prepare(self):
        """Finds the candidates, draws the samples, sets up the BN
        re-estimation and the pre-check; decides whether to act."""
        self._pairs = find_pairs(self.model)
        if not self._pairs:
            raise ValueError(
                f"{self.method} found no collapsible activation in model "
                f"'{self.model.name}'. Convert its activations first: "
                "`model = keras_collapse.make_collapsible(model)` (then compile "
                "and fit that model)."
            )
        names = [p.activation.name for p in self._pairs]
        unknown = sorted(set(self.candidates or ()) - set(names))
        if unknown:
            raise ValueError(
                f"`candidates` names layers that are not collapsible activations "
                f"of model '{self.model.name}': {unknown}. Available: {names}"
            )
        self._graph = Graph.from_model(self.model)
        n_inputs = len(self.model.inputs)
        # Samples are drawn and checked here, before any change to the model.
        self._sample = self._data = None
        if self.validation_data is not None:
            self._sample = data_lib.take_sample(
                self.validation_data,
                self.samples,
                self.seed,
                n_inputs=n_inputs,
                labels=True,
                what="validation_data",
            )
            data_lib.check_inputs(self.model, self._sample[0], "validation_data")
        if self.data is not None:
            self._data = data_lib.take_sample(
                self.data, self.samples, self.seed, n_inputs=n_inputs, what="data"
            )[0]
            data_lib.check_inputs(self.model, self._data, "data")
        # BN statistics come from the training inputs (`data`): re-estimating
        # them on the validation sample would make the guard judge on the
        # data the statistics were fitted to. With `recalibrate=True` and
        # only validation data, its inputs are used.
        inputs = self._sample[0] if self._sample is not None else None
        calibration = self._data
        if calibration is None and self.recalibrate is True:
            calibration = inputs
        settle_x = self._data if self._data is not None else inputs
        self._recalibrator = self._settle = None
        recalibrator = None
        if settle_x is not None and self.recalibrate in ("auto", True):
            recalibrator = BatchNormRecalibrator(self.model)
            recalibrator = recalibrator if recalibrator.layers else None
        if recalibrator is not None and calibration is not None:
            self._recalibrator = (recalibrator, calibration)
        # A measurement on the labelled sample (the guard's, the
        # pre-check's, a measured ranking's) is made on BN statistics
        # re-estimated for it and then put back (on `data`, else on the
        # sample's inputs, which then never reach the statistics training
        # uses): the moving averages lag a change by ~100 steps (momentum
        # 0.99), longer than an epoch of a small fine-tune, and a change
        # judged on them reads worse than it is.
        if recalibrator is not None:
            self._settle = functools.partial(
                recalibrator.settled, settle_x, batch_size=self.batch_size
            )
        # With an in-place re-estimation before each judgment (`data`, or
        # `recalibrate=True`), the guard and the pre-check need no more.
        self._settle_to_measure = self._settle if self._recalibrator is None else None
        self._precheck = None
        has_sample = self._sample is not None or self._data is not None
        if self.precheck is not False and (self.precheck != "auto" or has_sample):
            own = self.precheck if not isinstance(self.precheck, (bool, str)) else None
            self._precheck = Precheck(
                self.model,
                self._sample,
                self._data,
                self.tolerance,
                self.batch_size,
                own_tolerance=own,
                settle=self._settle_to_measure,
            )
            if not self._precheck.active:
                raise ValueError(
                    f"{self.method}: `precheck=True` measures each change on a "
                    "sample: pass `validation_data=(x, y)` or `data=x`."
                )
        self._active = self._check_scorable()
        if self._active and self.objective != "activations":
            self._active = self._check_units()
        if self._active and self._measures_itself():
            self._best = self._value(None, {}, final=True)  # the baseline

    def _check_scorable(self):
        """Whether any candidate can be scored; warns once otherwise."""
        if not self.scorer.batchnorm_only or any(
            p.batchnorm is not None for p in self._pairs
        ):
            return True
        if not getattr(self, "_warned_unscorable", False):
            self._warned_unscorable = True
            warnings.warn(self._unscorable_message(), stacklevel=3)
        return False

    def _check_units(self):
        """Whether some merge unit buys something under the objective;
        warns once (why, and what would help) otherwise."""
        pool = self._candidate_pairs()
        if not pool:
            return True  # nothing to choose from: said elsewhere
        found = units_of(self.model, pool, exact=self.exact, cost_model=self.cost_model)
        if found.for_objective(self.objective):
            return True
        if not getattr(self, "_warned_no_unit", False):
            self._warned_no_unit = True
            warnings.warn(
                f"{self.method}: in model '{self.model.name}', "
                f"{self._why_no_unit(pool, found)} This callback does nothing.",
                stacklevel=3,
            )
        return False

    def _why_no_unit(self, pool, found):
        """Why no candidate unit buys anything; names `data=` when units
        exist among activations this ranking cannot score (no BatchNorm)."""
        if not self.scorer.batchnorm_only:
            return found.why_none(self.objective)
        names = {p.activation.name for p in pool}
        others = [
            p for p in self._pairs if p.batchnorm is None and not p.activation.is_linear
        ]
        if others:
            wider = units_of(
                self.model,
                [*[p for p in self._pairs if p.activation.name in names], *others],
                exact=self.exact,
                cost_model=self.cost_model,
            ).for_objective(self.objective)
            unscored = sorted(
                {n for u in wider for n in u.activations if n not in names}
            )
            if unscored:
                return (
                    f"the merge units under objective {self.objective!r} hold "
                    f"activations without a BatchNormalization ({unscored}), "
                    f"which the {self.scorer.label} cannot score: pass "
                    "`data=x_sample` (or `validation_data=(x, y)`) to make "
                    "them candidates."
                )
        return found.why_none(self.objective)

    def _unscorable_message(self):
        return (
            f"{self.method}: no collapsible activation of model "
            f"'{self.model.name}' can be scored by the {self.scorer.label}; "
            "this callback does nothing."
        )
