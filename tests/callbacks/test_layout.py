"""The callbacks' modules: the old import paths still work after the split,
no module grows past 500 lines, and the engine's event lines read well."""

import pathlib

import pytest

import keras_collapse as kc
from keras_collapse.callbacks.events import describe_event
from tests.testing import TestCase

PACKAGE = pathlib.Path(kc.__file__).parent


class TestOldPaths(TestCase):
    def test_engine(self):
        from keras_collapse.callbacks.decisions import Decision
        from keras_collapse.callbacks.engine import Decision as OldDecision
        from keras_collapse.callbacks.engine import LinearizationCallback

        assert OldDecision is Decision
        assert kc.LinearizationCallback is LinearizationCallback

    def test_nepenthe(self):
        from keras_collapse.callbacks.nepenthe import CONFIDENCE
        from keras_collapse.callbacks.nepenthe import LAYER_CAP
        from keras_collapse.callbacks.nepenthe import ZERO_ENTROPY
        from keras_collapse.callbacks.nepenthe import NEPENTHECallback

        assert kc.NEPENTHECallback is NEPENTHECallback
        assert (CONFIDENCE, LAYER_CAP, ZERO_ENTROPY) == (0.95, 0.5, 0.286)

    def test_joint(self):
        from keras_collapse.callbacks.joint import CHOSEN
        from keras_collapse.callbacks.joint import PINNED
        from keras_collapse.callbacks.joint import JointLinearizationCallback

        assert kc.JointLinearizationCallback is JointLinearizationCallback
        assert (CHOSEN, PINNED) == ((1.0, 1.0), (0.0, 0.0))

    def test_prune(self):
        from keras_collapse.actions import prunable
        from keras_collapse.actions import prune_budget
        from keras_collapse.actions.prune import Prunable
        from keras_collapse.actions.prune import allocate_budget
        from keras_collapse.actions.prune import output_channels
        from keras_collapse.actions.prune import prunable_layers

        assert allocate_budget is prune_budget.allocate_budget
        assert prunable_layers is prunable.prunable_layers
        assert Prunable is prunable.Prunable
        assert output_channels is prunable.output_channels
        assert kc.allocate_budget is allocate_budget

    @pytest.mark.parametrize(
        "name",
        [
            "EASIERCallback",
            "JointLinearizationCallback",
            "LayerCollapseCallback",
            "LinearizationCallback",
            "NEPENTHECallback",
            "TLCCallback",
        ],
    )
    def test_exports_and_qualified_names(self, name):
        import keras_collapse.callbacks as callbacks

        cls = getattr(callbacks, name)
        assert getattr(kc, name) is cls
        # Where the class lives (its module) is where it was: pickles, logs
        # and users' code name it there.
        old = {
            "EASIERCallback": "easier",
            "JointLinearizationCallback": "joint",
            "LayerCollapseCallback": "layercollapse",
            "LinearizationCallback": "engine",
            "NEPENTHECallback": "nepenthe",
            "TLCCallback": "tlc",
        }[name]
        assert cls.__module__ == f"keras_collapse.callbacks.{old}"


class TestModuleSize(TestCase):
    @pytest.mark.parametrize("folder", ["callbacks", "actions", "scores"])
    def test_no_module_over_500_lines(self, folder):
        long = {
            path.name: n
            for path in (PACKAGE / folder).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 500
        }
        assert not long, long

    def test_collapse_module(self):
        assert len((PACKAGE / "collapse.py").read_text().splitlines()) <= 500


class TestEventLines(TestCase):
    def test_linearized(self):
        event = {
            "epoch": 3,
            "action": "linearized",
            "layers": ["a", "b"],
            "values": [0.01, 0.2],
            "label": "entropy",
            "channels_off": [2, None],
            "ramp_epochs": 1,
            "ramp_steps": 10,
        }
        line = describe_event("TLCCallback", event, "val_accuracy")
        assert line == (
            "Epoch 3: TLCCallback linearized a, b (entropy 0.01, 0.2; 2 OFF "
            "channels zeroed; eased in over the next 1 epoch(s))."
        )

    def test_rolled_back_mid_epoch(self):
        event = {
            "epoch": 2,
            "step": 40,
            "action": "rolled back",
            "layers": ["a"],
            "value": 0.5,
            "best": 0.9,
            "reason": "the monitored value fell too far",
            "retried": True,
        }
        line = describe_event("EASIERCallback", event, "sample accuracy")
        assert line.startswith("Epoch 2, step 40: EASIERCallback rolled back a: ")
        assert "sample accuracy 0.5000, best before 0.9000" in line
        assert line.endswith("back among the candidates at half the pace.")

    def test_stopped_without_epoch(self):
        event = {"epoch": None, "action": "stopped", "layers": [], "reason": "done"}
        assert describe_event("M", event, "loss") == "M stopped: done."
