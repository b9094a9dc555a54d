"""One TLC training run, on one device or data-parallel on two; prints JSON.

Run by tests/integration/test_distributed.py in a fresh process, because the
devices must be set up before the backend initializes:

    KERAS_BACKEND=jax python -m tests.integration.distributed_worker single
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m tests.integration.distributed_worker distributed

`distributed` is `keras.distribution.DataParallel` over two virtual CPU
devices on JAX, `tf.distribute.MirroredStrategy` over two logical CPUs on
TensorFlow. Options: `--ranking batchnorm|validation|statistics` (the
TLCCallback's data-free default, `validation_data=`, `data=`),
`--synchronized` (TensorFlow: BatchNormalization with global batch
statistics), `--fit-outside-scope` (TensorFlow: build and compile in the
strategy's scope, `fit` outside it).

The run: a Conv/BN/ReLU CNN on sklearn's digits, the same seeds and the same
global batches in every mode (no shuffling, a batch size and a training set
divisible by the number of replicas), trained with a TLCCallback that decides
after every epoch. The last line of stdout is the JSON record: the
callback's events, per-epoch history, what every replica holds, and what
`surgery` made of the trained model.
"""

import argparse
import contextlib
import json
import os
import sys

BATCH_SIZE = 64
TRAIN = 18 * BATCH_SIZE  # whole batches: no short last batch to split
EPOCHS = 4  # decisions after epochs 1, 2, 3; the last one judged after 4
# The guard's verdict is forced to a rollback after this epoch (1-based): a
# rollback then happens in every run, whatever the numbers, so that restoring
# the snapshot and undoing a linearization are exercised on every replica.
SABOTAGED_EPOCH = 3


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "distributed"])
    parser.add_argument("--synchronized", action="store_true")
    parser.add_argument("--fit-outside-scope", action="store_true")
    parser.add_argument(
        "--ranking",
        default="batchnorm",
        choices=["batchnorm", "validation", "statistics"],
    )
    return parser.parse_args()


def setup_devices(mode):
    """Sets up the devices before the backend initializes; returns the
    TensorFlow strategy (or None), a function that opens the scope to build
    and train in, the
    number of devices seen and the number of replicas trained on."""
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf

        if mode == "distributed":
            (cpu,) = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            devices = len(tf.config.list_logical_devices("CPU"))
            return strategy, strategy.scope, devices, strategy.num_replicas_in_sync
        return None, contextlib.nullcontext, 1, 1
    if backend == "jax":
        import keras

        devices = keras.distribution.list_devices()
        if mode == "distributed":
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices)
            )
            return None, contextlib.nullcontext, len(devices), len(devices)
        return None, contextlib.nullcontext, len(devices), 1
    raise SystemExit(f"no distributed mode on backend {backend}")


def load_data():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN : TRAIN + 256], y[TRAIN : TRAIN + 256])


def build_model(synchronized):
    import keras
    import numpy as np

    import keras_collapse as kc

    def block(h, filters, kernel, name):
        h = keras.layers.Conv2D(
            filters, kernel, padding="same", use_bias=False, name=f"{name}_conv"
        )(h)
        bn = {"synchronized": True} if synchronized else {}
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn", **bn)(h)
        return keras.layers.ReLU(name=name)(h)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = block(inputs, 16, 3, "act0")
    h = block(h, 24, 1, "act1")
    h = block(h, 24, 3, "act2")
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    # Trained slopes, as when these runs were written: with frozen ones the
    # per-replica BN statistics of TensorFlow's MirroredStrategy came out
    # identical (not understood yet; see the issue 12 note).
    model = kc.make_collapsible(model, trainable_alpha=True)
    # Informative BatchNorms, as after pretraining: every third channel
    # surely OFF, the others leaning ON, so that data-free TLC has layers to
    # rank (it leaves alone a BN that says nothing, as a fresh one does).
    for name in ("act0", "act1", "act2"):
        bn = model.get_layer(f"{name}_bn")
        gamma, beta, *stats = bn.get_weights()
        beta = np.full_like(gamma, 1.0)
        beta[::3] = -3.0
        bn.set_weights([gamma, beta, *stats])
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def make_guard():
    import keras

    class Guard(keras.callbacks.Callback):
        """`logs['guard_accuracy']`: the training accuracy, except 0 after
        SABOTAGED_EPOCH. Listed before the TLCCallback, which monitors it."""

        def on_epoch_end(self, epoch, logs=None):
            sabotaged = epoch + 1 == SABOTAGED_EPOCH
            logs["guard_accuracy"] = 0.0 if sabotaged else logs["accuracy"]

    return Guard()


def replica_values(variable, strategy):
    """The variable's value on every device that holds a copy."""
    import keras
    import numpy as np

    if strategy is not None:  # TensorFlow MirroredStrategy
        return [
            np.asarray(v.numpy())
            for v in strategy.experimental_local_results(variable.value)
        ]
    value = variable.value
    shards = getattr(value, "addressable_shards", None)
    if shards is None:
        return [np.asarray(keras.ops.convert_to_numpy(value))]
    return [np.asarray(s.data) for s in shards]


def replica_record(model, tlc, strategy):
    """What every replica holds: how many copies each variable has, the
    largest difference between the copies (and which variables differ), and
    per decided layer its lock and its zeroed BN channels on each replica."""
    import numpy as np

    spread, copies, diverged = 0.0, set(), {}
    for variable in model.variables:
        values = replica_values(variable, strategy)
        copies.add(len(values))
        for other in values[1:]:
            assert other.shape == values[0].shape, variable.path
            gap = float(np.max(np.abs(other - values[0])))
            spread = max(spread, gap)
            if gap > 0:
                diverged[variable.path] = max(gap, diverged.get(variable.path, 0))
    layers = {}
    for name in sorted(set(tlc.linearized) | set(tlc.kept)):
        layer = model.get_layer(name)
        bn = model.get_layer(f"{name}_bn")
        layers[name] = {
            "lock": [float(v) for v in replica_values(layer.linear_lock, strategy)],
            # Channels with gamma = beta = 0, per replica.
            "zeroed": [
                int(np.sum((g == 0) & (b == 0)))
                for g, b in zip(
                    replica_values(bn.gamma, strategy),
                    replica_values(bn.beta, strategy),
                )
            ],
            "constrained": bn.gamma.constraint is not None,
        }
    return {
        "copies": sorted(copies),
        "spread": spread,
        "diverged": diverged,
        "layers": layers,
    }


def surgery_record(model, x):
    import keras
    import numpy as np

    import keras_collapse as kc

    small, report = kc.surgery(model, return_report=True)
    expected = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    got = np.asarray(keras.ops.convert_to_numpy(small(x, training=False)))
    collapsible = [layer.name for layer in kc.collapsible_layers(model)]
    remaining = {layer.name for layer in small.layers}
    return {
        "depth_before": report.before.depth,
        "depth_after": report.after.depth,
        "activations_after": report.after.activations,
        "removed": sorted(n for n in collapsible if n not in remaining),
        "verified_deviation": report.deviation,
        "deviation": float(np.max(np.abs(got - expected)) / np.max(np.abs(expected))),
    }


def main():
    args = parse_args()
    strategy, scope, devices, replicas = setup_devices(args.mode)
    import keras

    import keras_collapse as kc

    (x, y), (x_val, y_val) = load_data()
    with scope():
        model = build_model(args.synchronized)
        sources = {
            "batchnorm": {},
            "validation": {"validation_data": (x_val, y_val)},
            "statistics": {"data": x[:512]},
        }
        tlc = kc.TLCCallback(
            **sources[args.ranking],
            monitor="guard_accuracy",
            mode="max",  # a key the model's metrics do not know
            precheck=False,  # the schedule this test pins: one change an epoch
            samples=512,
            warmup_epochs=1,
            interval=1,
            ramp_epochs=1,
            verbose=0,
        )
    # Keras' guides build and compile in the scope and may fit outside it;
    # the callback's measurements then run with no strategy in scope.
    with contextlib.nullcontext() if args.fit_outside_scope else scope():
        history = model.fit(
            x,
            y,
            batch_size=BATCH_SIZE,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            callbacks=[make_guard(), tlc],
        )
    events = [
        {
            "epoch": e["epoch"],
            "action": e["action"],
            "layers": e["layers"],
            "reason": e.get("reason"),
            "value": e.get("value"),
            "best": e.get("best"),
            "ranked": e.get("ranked"),
            "channels_off": e.get("channels_off"),
        }
        for e in tlc.events
    ]
    record = {
        "backend": keras.backend.backend(),
        "mode": args.mode,
        "devices": devices,
        "replicas": replicas,
        "distribution": type(
            keras.distribution.distribution() if strategy is None else strategy
        ).__name__,
        "linearized": list(tlc.linearized),
        "kept": list(tlc.kept),
        "rollbacks": tlc.rollbacks,
        "events": events,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "state": replica_record(model, tlc, strategy),
        "surgery": surgery_record(model, x_val),
    }
    sys.stdout.write("\n" + json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
