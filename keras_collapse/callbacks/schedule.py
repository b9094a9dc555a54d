"""When the greedy engine decides: after a warm-up, then every `interval`
epochs, and never so late that the change cannot be judged."""

from keras_collapse.checks import check_int


class Schedule:
    """Decision epochs of the engine.

    Args:
        warmup_epochs: int >= 1, epochs before the first decision.
        interval: int >= 1, epochs between decisions.
        ramp_epochs: int in [0, interval], epochs a change is eased in over.
    """

    def __init__(self, warmup_epochs=1, interval=2, ramp_epochs=1):
        check_int("warmup_epochs", warmup_epochs, 1)
        check_int("interval", interval, 1)
        check_int("ramp_epochs", ramp_epochs, 0)
        if ramp_epochs > interval:
            raise ValueError(
                "`ramp_epochs` must be at most `interval` (the change is judged "
                f"at the next decision). Received: ramp_epochs={ramp_epochs}, "
                f"interval={interval}"
            )
        self.warmup_epochs = warmup_epochs
        self.interval = interval
        self.ramp_epochs = ramp_epochs

    def is_decision(self, epoch):
        """Whether the end of `epoch` (0-based) is a decision."""
        done = epoch + 1 - self.warmup_epochs
        return done >= 0 and done % self.interval == 0

    def room_after(self, epoch, epochs):
        """Whether a fit of `epochs` lasts long enough to judge a change made
        at the end of `epoch`."""
        return epochs is None or epoch + self.interval <= epochs - 1
