import pytest

from keras_collapse.report import ModelStats
from keras_collapse.report import format_entries
from keras_collapse.report import format_latency
from keras_collapse.report import format_stats_table
from keras_collapse.surgery.passes.journal import Entry
from tests.testing import TestCase

BEFORE = ModelStats(
    depth=20, activations=19, params=1_234_567, macs=40_000_000, layers=64
)
AFTER = ModelStats(
    depth=11, activations=9, params=617_284, macs=10_000_000, layers=64, notes=("n",)
)


def row(table, label):
    (line,) = [line for line in table.splitlines() if line.startswith(label)]
    return line[len(label) :].split()


def latency_result():
    return {
        "backend": "jax",
        "batch_sizes": [1, 64],
        "warmup": 3,
        "repeats": 20,
        "reference": "original",
        "models": {
            "original": {
                "seconds": {1: 0.00123, 64: 0.0456},
                "speedup": {1: 1.0, 64: 1.0},
            },
            "collapsed": {
                "seconds": {1: 0.000615, 64: 0.0114},
                "speedup": {1: 2.0, 64: 4.0},
            },
        },
    }


class TestStatsTable(TestCase):
    def test_rows_hold_before_after_and_change(self):
        table = format_stats_table(BEFORE, AFTER)
        assert row(table, "Depth (weight layers)") == ["20", "11", "-45.0%"]
        assert row(table, "Activations") == ["19", "9", "-52.6%"]
        assert row(table, "Parameters") == ["1,234,567", "617,284", "-50.0%"]
        assert row(table, "MACs per sample") == ["40,000,000", "10,000,000", "-75.0%"]
        assert row(table, "Layers") == ["64", "64", "0.0%"]
        assert table.splitlines()[0] == "Model statistics"
        assert table.splitlines()[-1] == "Note (after): n"

    def test_columns_are_aligned(self):
        lines = format_stats_table(BEFORE, AFTER).splitlines()[1:-1]
        assert len({len(line) for line in lines}) == 1

    @pytest.mark.parametrize(
        ("before", "after", "change"), [(0, 0, "0.0%"), (0, 3, "n/a"), (4, 6, "+50.0%")]
    )
    def test_change_from_zero(self, before, after, change):
        stats = [ModelStats(before, 0, 0, 0, 0), ModelStats(after, 0, 0, 0, 0)]
        assert row(format_stats_table(*stats), "Depth")[-1] == change

    def test_rejects_what_is_not_model_stats(self):
        with pytest.raises(ValueError, match="`after` must be a ModelStats"):
            format_stats_table(BEFORE, AFTER.as_dict())


class TestEntries(TestCase):
    def test_lists_every_entry(self):
        entries = [
            Entry("fold_bn", ("conv", "bn"), "BN folded into conv"),
            Entry("merge", ("a", "b", "c"), "3x3 -> 3x3 into 5x5"),
        ]
        lines = format_entries(entries, "Done").splitlines()
        assert lines[0] == "Done (2)"
        assert lines[-3] == "1  fold_bn  conv, bn  BN folded into conv"
        assert lines[-2] == "2  merge    a, b, c   3x3 -> 3x3 into 5x5"

    def test_no_entries(self):
        assert format_entries([], "Skipped") == "Skipped: (none)"

    def test_rejects_what_is_not_an_entry(self):
        with pytest.raises(ValueError, match="`entries` must be journal entries"):
            format_entries([("merge", ("a",), "")], "Done")


class TestLatencyTable(TestCase):
    def test_cells_hold_milliseconds_and_speedups(self):
        table = format_latency(latency_result())
        assert row(table, "original") == ["1.23", "ms", "1.00x", "45.6", "ms", "1.00x"]
        assert row(table, "collapsed") == [
            "0.615",
            "ms",
            "2.00x",
            "11.4",
            "ms",
            "4.00x",
        ]
        assert "jax" in table.splitlines()[0]
        assert "median of 20 runs" in table.splitlines()[0]

    def test_columns_are_aligned(self):
        lines = format_latency(latency_result()).splitlines()[1:]
        assert len({len(line) for line in lines}) == 1

    def test_rejects_what_measure_latency_did_not_return(self):
        match = "`result` must be the dict `measure_latency` returns"
        with pytest.raises(ValueError, match=match):
            format_latency({"models": {}})


class TestNoise(TestCase):
    def test_a_note_both_models_share_is_said_once(self):
        shared = "Input 'x' has unknown axes"
        before = ModelStats(1, 0, 0, 0, 0, notes=(shared, "only before"))
        after = ModelStats(1, 0, 0, 0, 0, notes=(shared, "only after"))
        notes = format_stats_table(before, after).splitlines()[-3:]
        assert notes == [
            f"Note: {shared}",
            "Note (before): only before",
            "Note (after): only after",
        ]

    def test_the_same_action_on_a_shared_layer_is_one_row(self):
        # A dropout layer called twice (ViT's MLP) is removed at each call.
        entries = [
            Entry("remove_identity", ("dropout",), "identity at inference"),
            Entry("remove_identity", ("dropout",), "identity at inference"),
            Entry("merge", ("a", "b"), "2 -> 1 layer, exact"),
        ]
        lines = format_entries(entries, "Done").splitlines()
        assert lines[0] == "Done (2)"
        rows = [line for line in lines if line[:1].isdigit()]
        assert len(rows) == 2
        assert rows[0].split() == [
            "1",
            "remove_identity",
            "dropout",
            "identity",
            "at",
            "inference",
            "(2",
            "calls)",
        ]
