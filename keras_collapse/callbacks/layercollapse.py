"""LayerCollapseCallback: the LayerCollapse slopes in the logs, and the ones
that reached the identity locked at the end of training."""

import keras
import numpy as np

from keras_collapse.actions.locking import lock_near_linear
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_number
from keras_collapse.collapsible import collapsible_layers
from keras_collapse.collapsible import sync_training_state
from keras_collapse.surgery.units import check_objective


class LayerCollapseCallback(keras.callbacks.Callback):
    """Watches the slopes a `LinearityRegularizer` pulls toward 1, and locks
    the near-linear ones when training ends (LayerCollapse's collapse step).

    Logs each epoch `layercollapse_alpha_mean`, `layercollapse_near_linear`
    (slopes within `tolerance` of 1) and `layercollapse_alpha_<layer>` (each
    layer's mean slope), so History, CSVLogger and TensorBoard show the
    pull at work; `locked` holds what `lock_near_linear` locked at the end.

    The slopes move at their own learning-rate scale (`alpha_scale`, 32 by
    default with a regularizer: up to 32 x the learning rate per Adam step),
    so the pull reaches the identity at normal learning rates.

    Args:
        tolerance: float in [0, 1), the largest distance of a slope from the
            identity, `max |alpha - 1|` over a layer's alphas, that is
            locked (`lock_near_linear`'s; not the greedy callbacks'
            accuracy drop). Defaults to `0.05`.
        lock: bool, whether to lock at the end of training. Defaults to
            `True`.
        objective: `lock_near_linear`'s: "activations", or "depth" /
            "latency" (whole merge units only). Defaults to
            `"activations"`.
        exact: bool, for the merge units. Defaults to `True`.
        cost_model: for the merge units. Defaults to `None` (MACs).
        verbose: 0 or 1, a line at the end of training. Defaults to `1`.

    Example:

        model = keras_collapse.make_collapsible(
            model, alpha_regularizer=keras_collapse.LinearityRegularizer(3.0))
        model.compile(keras.optimizers.Adam(3e-4), loss)
        history = model.fit(x, y, epochs=6,
                            callbacks=[keras_collapse.LayerCollapseCallback()])
        history.history["layercollapse_alpha_mean"]  # rising toward 1

    Reference:
        LayerCollapse, arXiv 2311.17943.
    """

    log_prefix = "layercollapse"

    def __init__(
        self,
        tolerance=0.05,
        lock=True,
        *,
        objective="activations",
        exact=True,
        cost_model=None,
        verbose=1,
    ):
        super().__init__()
        self.tolerance = check_number(
            "tolerance", tolerance, 0, 1, high_open=True, what="the largest |alpha - 1|"
        )
        self.lock = check_bool("lock", lock)
        self.objective = check_objective(objective)
        self.exact = check_bool("exact", exact)
        self.cost_model = cost_model
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.locked = []
        self._layers = [
            layer
            for layer in collapsible_layers(self.model)
            if layer.alpha_regularizer is not None and not layer.is_locked
        ]
        if not self._layers:
            raise ValueError(
                f"LayerCollapseCallback found no slope pulled by a regularizer in "
                f"model '{self.model.name}': convert with `keras_collapse."
                "make_collapsible(model, alpha_regularizer=keras_collapse."
                "LinearityRegularizer(...))`."
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        sync_training_state(self.model)
        slopes = {
            layer.name: float(np.mean(layer.alpha_numpy())) for layer in self._layers
        }
        prefix = self.log_prefix
        logs[f"{prefix}_alpha_mean"] = float(np.mean(list(slopes.values())))
        logs[f"{prefix}_near_linear"] = float(
            sum(
                float(np.max(np.abs(layer.alpha_numpy() - 1.0))) <= self.tolerance
                for layer in self._layers
            )
        )
        for name, value in slopes.items():
            logs[f"{prefix}_alpha_{name}"] = value

    def on_train_end(self, logs=None):
        if not self.lock:
            return
        self.locked = lock_near_linear(
            self.model,
            self.tolerance,
            objective=self.objective,
            exact=self.exact,
            cost_model=self.cost_model,
        )
        if self.verbose:
            names = ", ".join(layer.name for layer in self.locked) or "none"
            print(f"\nLayerCollapseCallback locked: {names}.")
