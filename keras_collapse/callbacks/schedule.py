"""When the greedy engine decides: after a warm-up, then every `interval`
epochs (or every `interval_steps` training steps), and never so late that
the change cannot be judged."""

from keras_collapse.checks import check_int


class Schedule:
    """Decision points of the engine.

    Args:
        warmup_epochs: int >= 1, epochs before the first decision.
        interval: int >= 1, epochs between decisions.
        ramp_epochs: int in [0, interval], epochs a change is eased in over.
        interval_steps: int >= 1 or None, training steps (batches) between
            decisions after the warm-up, instead of `interval` epochs: a
            short fine-tune then holds more decisions than it has epochs.
            A change is eased in over the first half of the steps when
            `ramp_epochs` > 0. Defaults to `None`.
    """

    def __init__(self, warmup_epochs=1, interval=2, ramp_epochs=1, interval_steps=None):
        check_int("warmup_epochs", warmup_epochs, 1)
        check_int("interval", interval, 1)
        check_int("ramp_epochs", ramp_epochs, 0)
        if interval_steps is not None:
            check_int("interval_steps", interval_steps, 1)
        if ramp_epochs > interval:
            raise ValueError(
                "`ramp_epochs` must be at most `interval` (the change is judged "
                f"at the next decision). Received: ramp_epochs={ramp_epochs}, "
                f"interval={interval}"
            )
        self.warmup_epochs = warmup_epochs
        self.interval = interval
        self.ramp_epochs = ramp_epochs
        self.interval_steps = interval_steps

    @property
    def in_steps(self):
        """Whether decisions come every `interval_steps` steps."""
        return self.interval_steps is not None

    def is_decision(self, epoch):
        """Whether the end of `epoch` (0-based) is a decision: every
        `interval` epochs after the warm-up; in steps, only the warm-up's
        end (the next ones come between batches)."""
        done = epoch + 1 - self.warmup_epochs
        if self.in_steps:
            return done == 0
        return done >= 0 and done % self.interval == 0

    def is_decision_step(self, steps_since_warmup):
        """Whether a batch ending `steps_since_warmup` steps after the
        warm-up's end is a decision."""
        return (
            self.in_steps
            and steps_since_warmup > 0
            and steps_since_warmup % self.interval_steps == 0
        )

    def room_after(self, epoch, epochs):
        """Whether a fit of `epochs` lasts long enough to judge a change made
        at the end of `epoch` (in epochs)."""
        return epochs is None or epoch + self.interval <= epochs - 1

    def room_after_step(self, steps_left):
        """Whether `steps_left` training steps (None: unknown) are enough to
        judge a change made now."""
        return steps_left is None or steps_left >= self.interval_steps

    def ramp_steps(self, steps_per_epoch):
        """Training steps a change is eased in over (0: at once)."""
        if not self.ramp_epochs:
            return 0
        if self.in_steps:
            return self.interval_steps // 2
        return self.ramp_epochs * steps_per_epoch if steps_per_epoch else 0
