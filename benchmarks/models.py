"""The models the benchmarks time: random weights, random BN statistics.

Every builder returns a functional `keras.Model` whose chosen collapsible
activations are already locked linear (`keras_collapse.lock_linear`), so that
`surgery` has something to merge. Builders are seeded (`seed`, default 0):
the same weights on every run. Importing this module imports Keras: set
`KERAS_BACKEND` first.
"""

import keras
import numpy as np

import keras_collapse as kc
from keras_collapse.convert import make_collapsible

layers = keras.layers

# MobileNetV2-style stack: (output channels, stride) of 10 inverted-residual
# blocks with expansion 6; the 6 blocks with stride 1 and equal channels are
# residual. With the stem, the head conv and the classifier: 33 weight layers.
MOBILENET_BLOCKS = (
    (16, 1),
    (24, 2),
    (24, 1),
    (32, 2),
    (32, 1),
    (32, 1),
    (64, 2),
    (64, 1),
    (64, 1),
    (64, 1),
)


def randomize_batchnorms(model, seed=0):
    """Gives every BatchNormalization random gamma, beta, mean and variance,
    as a trained model has (fresh BNs are the identity and fold trivially)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            weights = []
            for weight in layer.weights:
                shape = weight.shape
                if "gamma" in weight.path or "variance" in weight.path:
                    weights.append(rng.uniform(0.5, 1.5, shape))
                else:  # beta, moving_mean
                    weights.append(rng.normal(0.0, 0.2, shape))
            layer.set_weights(weights)
    return model


def _conv_bn(x, filters, kernel_size, name, strides=1):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=name,
    )(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _inverted_residual(x, filters, stride, name, lock):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), + x if it fits.

    Returns the output and the block's collapsible activations to lock."""
    channels = x.shape[-1]
    residual = stride == 1 and channels == filters
    h = _conv_bn(x, 6 * channels, 1, f"{name}_expand")
    expand_act = kc.CollapsiblePReLU(name=f"{name}_expand_act")
    h = expand_act(h)
    h = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(h)
    h = layers.BatchNormalization(name=f"{name}_dw_bn")(h)
    dw_act = kc.CollapsiblePReLU(name=f"{name}_dw_act")
    h = dw_act(h)
    h = _conv_bn(h, filters, 1, f"{name}_project")
    if residual:
        h = layers.Add(name=f"{name}_add")([x, h])
    chosen = lock == "all" or (lock == "residual" and residual)
    return h, [expand_act, dw_act] if chosen else []


def mobilenet_v2_style(lock="all", input_size=32, seed=0):
    """A MobileNetV2-style net of 10 inverted-residual blocks (`MOBILENET_BLOCKS`).

    Args:
        lock: str or None. "all": lock every activation inside the blocks;
            "residual": only those of the 6 residual blocks; None: none.
        input_size: int, height and width of the RGB input.
        seed: int, seed of the weights and of the BN statistics.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = _conv_bn(inputs, 32, 3, "stem")
    x = layers.ReLU(name="stem_relu")(x)
    to_lock = []
    for i, (filters, stride) in enumerate(MOBILENET_BLOCKS):
        x, acts = _inverted_residual(x, filters, stride, f"block{i + 1}", lock)
        to_lock += acts
    x = _conv_bn(x, 256, 1, "head")
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=f"mobilenet_v2_style_{lock}")
    return _finish(model, to_lock, seed)


def resnet20_style(input_size=32, seed=0, lock=True):
    """A CIFAR ResNet-20: 3 stages (16, 32, 64 channels) of 3 basic blocks,
    each conv3x3-BN-act-conv3x3-BN + shortcut, then ReLU. With `lock`, the
    inner activation of every block is locked linear; the one after the Add
    stays a ReLU."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = layers.ReLU(name="stem_relu")(_conv_bn(inputs, 16, 3, "stem"))
    to_lock = []
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            name = f"stage{stage + 1}_block{block + 1}"
            stride = 2 if stage > 0 and block == 0 else 1
            h = _conv_bn(x, filters, 3, f"{name}_conv1", strides=stride)
            act = kc.CollapsiblePReLU(name=f"{name}_act")
            to_lock.append(act)
            h = _conv_bn(act(h), filters, 3, f"{name}_conv2")
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = _conv_bn(x, filters, 1, f"{name}_shortcut", strides=stride)
            x = layers.Add(name=f"{name}_add")([shortcut, h])
            x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name="resnet20_style")
    return _finish(model, to_lock if lock else [], seed)


def cnn_blocks(filters=(16, 16, 32, 32, 64, 64), input_size=32, seed=0):
    """Conv2D 3x3 'same' -> BN -> CollapsiblePReLU per entry of `filters`
    (no stride, nothing locked), then global average pooling and a Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = inputs
    for i, n in enumerate(filters):
        x = _conv_bn(x, n, 3, f"conv{i + 1}")
        x = kc.CollapsiblePReLU(name=f"conv{i + 1}_act")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=f"cnn_{len(filters)}_blocks")
    return _finish(model, [], seed)


def mlp_blocks(blocks=4, width=256, expansion=4, seed=0):
    """Transformer-style MLP blocks on vectors, as LayerCollapse collapses them:
    Dense(expansion * width) -> act (locked) -> Dense(width) -> BN -> ReLU."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    x = inputs
    to_lock = []
    for i in range(blocks):
        h = layers.Dense(expansion * width, name=f"mlp{i + 1}_up")(x)
        act = kc.CollapsiblePReLU(name=f"mlp{i + 1}_act")
        to_lock.append(act)
        h = layers.Dense(width, name=f"mlp{i + 1}_down")(act(h))
        h = layers.BatchNormalization(name=f"mlp{i + 1}_bn")(h)
        x = layers.ReLU(name=f"mlp{i + 1}_relu")(h)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=f"mlp_{blocks}_blocks")
    return _finish(model, to_lock, seed)


def mlp_chain(depth, width=256, seed=0):
    """`depth` Dense(width)-BN-act layers; every other activation locked."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    x = inputs
    to_lock = []
    for i in range(depth):
        x = layers.Dense(width, name=f"dense{i + 1}")(x)
        x = layers.BatchNormalization(name=f"dense{i + 1}_bn")(x)
        act = kc.CollapsiblePReLU(name=f"dense{i + 1}_act")
        if i % 2 == 0:
            to_lock.append(act)
        x = act(x)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=f"mlp_{depth}")
    return _finish(model, to_lock, seed)


def conv_chain(pairs, channels=64, input_size=32, seed=0):
    """`pairs` of conv1x1-BN-act-conv3x3-BN-act; the act inside each pair is
    locked, so each pair merges into one 3x3 conv (with a border bias map)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 16))
    x = inputs
    to_lock = []
    for i in range(pairs):
        act = kc.CollapsiblePReLU(name=f"pair{i + 1}_act")
        to_lock.append(act)
        x = act(_conv_bn(x, channels, 1, f"pair{i + 1}_1x1"))
        x = _conv_bn(x, channels, 3, f"pair{i + 1}_3x3")
        x = layers.ReLU(name=f"pair{i + 1}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=f"conv_chain_{2 * pairs}")
    return _finish(model, to_lock, seed)


def keras_mobilenet_v2(alpha=0.35, input_size=32, seed=0):
    """`keras.applications.MobileNetV2` (random weights) made collapsible,
    every ReLU6 inside the inverted-residual blocks locked linear."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=alpha, weights=None
    )
    model = make_collapsible(base)
    to_lock = [
        layer
        for layer in kc.collapsible_layers(model)
        if layer.name.startswith(("block_", "expanded_conv"))
    ]
    return _finish(model, to_lock, seed)


def keras_resnet50(input_size=32, seed=0):
    """`keras.applications.ResNet50` (random weights) made collapsible, the
    ReLU after each bottleneck's 3x3 conv locked linear."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.ResNet50(
        input_shape=(input_size, input_size, 3), weights=None
    )
    model = make_collapsible(base)
    to_lock = [
        layer
        for layer in kc.collapsible_layers(model)
        if layer.name.endswith("_2_relu")
    ]
    return _finish(model, to_lock, seed)


def _finish(model, to_lock, seed):
    randomize_batchnorms(model, seed)
    if to_lock:
        kc.lock_linear(model, to_lock)
    return model
