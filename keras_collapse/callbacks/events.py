"""The greedy engine's records: `events` (one dict per action) and the
verbose line each prints."""


class EventLog:
    """Appends to `events` and, when verbose, prints a line per event."""

    def _event(self, epoch, action, layers, message=None, **details):
        event = {
            "epoch": None if epoch is None else epoch + 1,
            **({} if self._at_step is None else {"step": self._at_step}),
            "action": action,
            "layers": list(layers),
            **details,
        }
        self.events.append(event)
        if self.verbose:
            key = (
                f"sample {self.monitored}"
                if self._measures_itself()
                else self.monitored
            )
            # A line of its own, after Keras' progress bar (as Keras' callbacks do).
            line = message or describe_event(self.method, event, key)
            print("\n" + line)


def describe_event(method, event, key):
    """The engine's own events as a verbose line."""
    epoch = "" if event["epoch"] is None else f"Epoch {event['epoch']}"
    epoch += f", step {event['step']}: " if "step" in event else (": " if epoch else "")
    layers = ", ".join(event["layers"])
    action = event["action"]
    if action == "linearized":
        values = ", ".join(f"{v:.4g}" for v in event["values"])
        off = sum(n for n in event["channels_off"] if n)
        how = "at once"
        if event.get("ramp_steps") and "step" in event:
            how = f"eased in over the next {event['ramp_steps']} steps"
        elif event["ramp_epochs"]:
            how = f"eased in over the next {event['ramp_epochs']} epoch(s)"
        return (
            f"{epoch}{method} linearized {layers} ({event['label']} {values}; "
            f"{off} OFF channels zeroed; {how})."
        )
    if action in ("accepted", "rolled back"):
        value = event.get("value")
        shown = "n/a" if value is None else f"{value:.4f}"
        best = event.get("best")
        best = "n/a" if best is None else f"{best:.4f}"
        tail = f" ({event['reason']})" if event.get("reason") else ""
        if event.get("retried"):
            tail += "; back among the candidates at half the pace"
        what = f" {layers}" if layers else ""
        return (
            f"{epoch}{method} {action}{what}: {key} {shown}, best before {best}{tail}."
        )
    what = f" {layers}" if layers else ""
    reason = event.get("reason")
    return f"{epoch}{method} {action}{what}" + (f": {reason}." if reason else ".")
