"""keras_collapse: make trained Keras 3 networks shallower and faster.

The package is lazy (PEP 562): `import keras_collapse` imports neither Keras
nor a backend; each public name is imported from its module the first time
it is used (`keras_collapse.surgery`, `from keras_collapse import collapse`),
so that the `keras-collapse` command answers `--help` and usage errors at
once. `__all__` and `dir()` list every public name without importing it.

Keras finds the library's serializable classes (the collapsible layers, the
masks' constraints, the regularizer) by their registered names, so they are
registered whenever Keras is loaded: at once if it already is, else right
after Keras' own import. `import keras_collapse` then `load_model(...)` works
as it did when the package imported everything eagerly.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types

from keras_collapse.version import __version__ as __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "ActivationStatistics": "keras_collapse.scores",
    "BatchNormAnalysis": "keras_collapse.scores",
    "BiasMap": "keras_collapse.layers",
    "CollapsibleActivation": "keras_collapse.layers",
    "CollapsiblePReLU": "keras_collapse.layers",
    "EASIERCallback": "keras_collapse.callbacks",
    "Inspection": "keras_collapse.inspection",
    "JointLinearizationCallback": "keras_collapse.callbacks",
    "LayerCollapseCallback": "keras_collapse.callbacks",
    "LinearityRegularizer": "keras_collapse.regularizers",
    "LinearizationCallback": "keras_collapse.callbacks",
    "MacCostModel": "keras_collapse.cost_model",
    "MeasuredCostModel": "keras_collapse.cost_model",
    "MergeUnit": "keras_collapse.units",
    "MergeUnits": "keras_collapse.units",
    "NEPENTHECallback": "keras_collapse.callbacks",
    "Potential": "keras_collapse.report.potential",
    "SurgeryReport": "keras_collapse.report",
    "TLCCallback": "keras_collapse.callbacks",
    "VerificationError": "keras_collapse.verify",
    "ZeroMask": "keras_collapse.masks",
    "activation_statistics": "keras_collapse.scores",
    "allocate_budget": "keras_collapse.prune",
    "analyze_batchnorm": "keras_collapse.scores",
    "collapse": "keras_collapse.collapse",
    "collapsible_layers": "keras_collapse.collapsible",
    "hold_at_zero": "keras_collapse.masks",
    "inspect": "keras_collapse.inspection",
    "linearize": "keras_collapse.linearize",
    "lock_linear": "keras_collapse.collapsible",
    "lock_near_linear": "keras_collapse.collapsible",
    "make_collapsible": "keras_collapse.convert",
    "measure_latency": "keras_collapse.report",
    "merge_units": "keras_collapse.units",
    "model_stats": "keras_collapse.report",
    "prunable_layers": "keras_collapse.prune",
    "prune_by_count": "keras_collapse.prune",
    "prune_by_fraction": "keras_collapse.prune",
    "recalibrate_batchnorm": "keras_collapse.recalibrate",
    "register_unroller": "keras_collapse.graph.unroll",
    "sparsity": "keras_collapse.prune",
    "surgery": "keras_collapse.surgery",
    "sync_training_state": "keras_collapse.collapsible",
}

__all__ = sorted([*_EXPORTS, "__version__"])

# The modules whose classes Keras must find by registered name to load a
# saved model that holds them.
_REGISTERING = (
    "keras_collapse.layers",
    "keras_collapse.masks",
    "keras_collapse.regularizers",
)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        return importlib.import_module(f"{__name__}.{name}")  # a subpackage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type: importing a submodule whose name is also a
    public function (`keras_collapse.collapse`, `.surgery`, `.linearize`)
    leaves the package attribute to the function, as an eager `__init__`
    did, instead of the import system binding the submodule over it."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def _register_serializables():
    for module in _REGISTERING:
        importlib.import_module(module)


class _KerasWatcher(importlib.abc.MetaPathFinder):
    """Registers the library's classes right after `keras` is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader, watcher):
        self.loader = loader
        self.watcher = watcher

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # Keras sees its own loader, as without the watcher.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if self.watcher in sys.meta_path:
            sys.meta_path.remove(self.watcher)
        _register_serializables()


if "keras" in sys.modules:
    _register_serializables()
elif not any(isinstance(f, _KerasWatcher) for f in sys.meta_path):
    sys.meta_path.insert(0, _KerasWatcher())
