"""Graph passes: each edits a `Graph` in place and records what it did."""

import importlib

# Modules that lived here in earlier releases (`from keras_collapse.passes
# import kinds`): they are the graph's vocabulary and rewrite API now.
_MOVED_TO_GRAPH = ("kinds", "rewrite")


def __getattr__(name):
    if name in _MOVED_TO_GRAPH:
        return importlib.import_module(f"keras_collapse.graph.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
