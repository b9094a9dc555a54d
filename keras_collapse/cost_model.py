"""How the surgery prices a layer, to take only merges that make a model cheaper.

Shallower is not always faster: two 3x3 convs (18 C^2 MACs per pixel) merge
into a 5x5 (25 C^2). The surgery merges a run of linear layers only where the
merged layer costs no more than the layers it replaces.
"""

import math


class MacCostModel:
    """Prices a layer by its multiply-accumulates, plus a fixed cost per layer.

    `cost = macs * (depthwise_factor if depthwise else 1) + layer_overhead`

    The defaults count MACs alone. On backends where every layer has a fixed
    dispatch cost (PyTorch eager: ~0.25 ms per Keras layer) a `layer_overhead`
    of a few million MACs favours fewer layers; where depthwise convolutions
    run far below peak (XLA:CPU, ~100x per MAC), `depthwise_factor` > 1
    favours merging them into dense convolutions.

    Any callable with the signature of `__call__` can replace it
    (`surgery(model, cost_model=my_callable)`).

    Args:
        layer_overhead: float, cost added per layer, in MAC units.
            Defaults to `0.0`.
        depthwise_factor: float, weight of a depthwise MAC relative to a
            dense one. Defaults to `1.0`.
    """

    def __init__(self, layer_overhead=0.0, depthwise_factor=1.0):
        for name, value in (
            ("layer_overhead", layer_overhead),
            ("depthwise_factor", depthwise_factor),
        ):
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
                )
        self.layer_overhead = float(layer_overhead)
        self.depthwise_factor = float(depthwise_factor)

    def __call__(self, kind, kernel_shape, output_positions):
        """Cost of one layer for one sample.

        Args:
            kind: str, "dense", "conv" or "depthwise".
            kernel_shape: tuple, the Keras kernel shape (`[k.., in, out]`,
                depthwise `[k.., C, multiplier]`, dense `[in, out]`).
            output_positions: int, output positions per sample (product of
                the output's spatial sizes; for Dense, of its leading axes).
        """
        macs = math.prod(kernel_shape) * output_positions
        if kind == "depthwise":
            macs *= self.depthwise_factor
        return macs + self.layer_overhead

    def __repr__(self):
        return (
            f"MacCostModel(layer_overhead={self.layer_overhead}, "
            f"depthwise_factor={self.depthwise_factor})"
        )
