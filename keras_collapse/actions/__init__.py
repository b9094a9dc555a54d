"""What the methods do to a model's weights and activations: linearize
(`linearize`, the slope `ramp`), `locking` near-linear slopes, `prune`
weights, `recalibrate` BatchNorm statistics."""
