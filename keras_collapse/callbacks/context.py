"""What a scorer may use at one decision, apart from any callback's state."""

import contextlib

import keras

from keras_collapse.actions.linearize import linearize_pairs
from keras_collapse.collapsible import sync_training_state
from keras_collapse.graph import Graph
from keras_collapse.scores.statistics import statistics_on_graph


def student_of(model):
    """The model whose layers a callback changes: `model` itself, or the
    student of a `keras.distillation.Distiller` being fit."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


class DecisionContext:
    """What a scorer may use at one decision (see `scores.scorers`).

    Attributes:
        model: the model whose activations are scored.
        rng: a seeded `np.random.Generator`.
        sample: `(x, y, sample_weight)` the fixed labelled sample, or None.
        data: the fixed unlabelled sample `x`, or None.

    Args:
        model: the model whose activations are scored.
        trainer: the model `fit` runs (a Distiller's, or `model`); its
            training state is synced before measuring. Defaults to `model`.
        data, sample, rng: as above.
        batch_size: int, the batch size of measurements.
        verbose: whether `progress` prints.
        on_skip: callable `(name, reason)`, told when a scorer leaves a
            candidate out for good. Defaults to `None`.
        graph: the model's `Graph`, if already read. Defaults to `None`.
        settle: a callable returning a context manager within which the BN
            statistics are settled (`BatchNormRecalibrator.settled`), or
            None: `evaluate` measures within it, so that a candidate
            linearized is judged as training will see it once its statistics
            catch up, not on statistics that predate it. Defaults to `None`.
    """

    def __init__(
        self,
        model,
        *,
        trainer=None,
        data=None,
        sample=None,
        rng=None,
        batch_size=128,
        verbose=0,
        on_skip=None,
        graph=None,
        settle=None,
    ):
        self.model = model
        self.trainer = trainer if trainer is not None else model
        self.rng = rng
        self.sample = sample
        self.data = data
        self.batch_size = batch_size
        self.verbose = verbose
        self._on_skip = on_skip
        self._graph = graph
        self._settle = settle
        self._statistics = None

    def evaluate(self):
        """`model.evaluate` on the labelled sample, as a dict (on settled BN
        statistics when the context has a `settle`)."""
        if self.sample is None:
            raise ValueError(
                "This scorer measures the loss on labelled data: pass "
                "`validation_data=(x, y)`."
            )
        return evaluate_sample(
            self.model, self.sample, self.batch_size, self.trainer, self._settle
        )

    def loss_if_linearized(self, pair, off):
        """The sample loss with `pair` linearized (channels `off` zeroed),
        the model put back as it was afterwards."""
        records = linearize_pairs(self.model, [pair], [off], constrain=False)
        try:
            return self.evaluate()["loss"]
        finally:
            for record in records:
                record.undo()

    def statistics(self, pairs):
        """`ActivationStatistics` of the candidates over the data sample,
        measured once per decision."""
        if self.data is None:
            raise ValueError("This scorer needs data: pass `data=x_sample`.")
        if self._statistics is None:
            sync_training_state(self.trainer)
            if self._graph is None:
                self._graph = Graph.from_model(self.model)
            self._statistics = statistics_on_graph(
                self.model,
                self._graph,
                [p.activation for p in pairs],
                self.data,
                self.batch_size,
            )
        return self._statistics

    def progress(self, total, what):
        """A `keras.utils.Progbar` when verbose, else a stand-in that prints
        nothing."""
        return Progress(total, what, self.verbose)

    def skip(self, name, reason):
        """Leaves a candidate out for good (e.g. non-finite statistics)."""
        if self._on_skip is not None:
            self._on_skip(name, reason)


class Progress:
    """A candidate counter: a Progbar when verbose and there is more than one."""

    def __init__(self, total, what, verbose):
        self._bar = None
        if verbose and total > 1:
            print(f"\n{what}: {total}")
            self._bar = keras.utils.Progbar(total, unit_name="candidate")

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)


def evaluate_sample(model, sample, batch_size, trainer=None, settle=None):
    """`model.evaluate` on a fixed `(x, y, w)` sample, as a dict, after the
    training state of `trainer` (the model `fit` runs) is synced; within
    `settle()` (`BatchNormRecalibrator.settled`) when given."""
    sync_training_state(trainer if trainer is not None else model)
    x, y, w = sample
    with settle() if settle is not None else contextlib.nullcontext():
        return model.evaluate(
            x, y, sample_weight=w, batch_size=batch_size, verbose=0, return_dict=True
        )
