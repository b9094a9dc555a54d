"""keras_collapse: make trained Keras 3 networks shallower and faster.

The package is lazy (PEP 562): `import keras_collapse` imports neither Keras
nor a backend; each public name is imported from its module the first time
it is used (`keras_collapse.surgery`, `from keras_collapse import collapse`),
so that the `keras-collapse` command answers `--help` and usage errors at
once. `__all__` and `dir()` list every public name without importing it.

`__all__` is what a user calls (`_EXPORTS`, each documented in README's API
table). Names that earlier releases exported and that now live in their
subpackages (`_INTERNALS`), and module paths that moved (`_MOVED`), still
resolve, so that users' code and saved files keep working.

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
import warnings

from keras_collapse.version import __version__ as __version__

# Public name -> the module that defines it: what a user calls.
_EXPORTS = {
    "ActivationStatistics": "keras_collapse.scores",
    "BatchNormAnalysis": "keras_collapse.scores",
    "CollapsibleActivation": "keras_collapse.layers",
    "CollapsiblePReLU": "keras_collapse.layers",
    "EASIERCallback": "keras_collapse.callbacks",
    "Inspection": "keras_collapse.surgery.inspection",
    "JointLinearizationCallback": "keras_collapse.callbacks",
    "LayerCollapseCallback": "keras_collapse.callbacks",
    "LinearityRegularizer": "keras_collapse.regularizers",
    "LinearizationCallback": "keras_collapse.callbacks",
    "MacCostModel": "keras_collapse.surgery.cost_models",
    "MeasuredCostModel": "keras_collapse.surgery.cost_models",
    "MergeUnit": "keras_collapse.surgery.units",
    "MergeUnits": "keras_collapse.surgery.units",
    "NEPENTHECallback": "keras_collapse.callbacks",
    "TLCCallback": "keras_collapse.callbacks",
    "VerificationError": "keras_collapse.surgery.verify",
    "activation_statistics": "keras_collapse.scores",
    "analyze_batchnorm": "keras_collapse.scores",
    "collapse": "keras_collapse.collapse",
    "collapsible_layers": "keras_collapse.collapsible",
    "inspect": "keras_collapse.surgery.inspection",
    "linearize": "keras_collapse.actions.linearize",
    "lock_linear": "keras_collapse.collapsible",
    "lock_near_linear": "keras_collapse.actions.locking",
    "make_collapsible": "keras_collapse.convert",
    "measure_latency": "keras_collapse.report",
    "merge_units": "keras_collapse.surgery.units",
    "model_stats": "keras_collapse.report",
    "prune_by_count": "keras_collapse.actions.prune",
    "prune_by_fraction": "keras_collapse.actions.prune",
    "recalibrate_batchnorm": "keras_collapse.actions.recalibrate",
    "register_unroller": "keras_collapse.graph.unroll",
    "sparsity": "keras_collapse.actions.prune",
    "surgery": "keras_collapse.surgery",
}

# Internals that earlier releases exported at the top level: still there for
# users' code, but not in `__all__` (each lives in its subpackage).
_INTERNALS = {
    "BiasMap": "keras_collapse.layers",
    "Potential": "keras_collapse.report.potential",
    "SurgeryReport": "keras_collapse.report",
    "ZeroMask": "keras_collapse.masks",
    "allocate_budget": "keras_collapse.actions.prune",
    "hold_at_zero": "keras_collapse.masks",
    "prunable_layers": "keras_collapse.actions.prune",
    "sync_training_state": "keras_collapse.collapsible",
}

# Modules of earlier releases -> where they live now. A user's import of the
# old path (`keras_collapse.units`, `keras_collapse.passes.merge`) gets the
# module itself (with a DeprecationWarning); saved files name classes by
# registered name, which did not change.
_MOVED = {
    "keras_collapse.channel_moments": "keras_collapse.graph.channel_moments",
    "keras_collapse.cost_model": "keras_collapse.surgery.cost_models",
    "keras_collapse.inspection": "keras_collapse.surgery.inspection",
    "keras_collapse.linearize": "keras_collapse.actions.linearize",
    "keras_collapse.passes": "keras_collapse.surgery.passes",
    "keras_collapse.passes.kinds": "keras_collapse.graph.kinds",
    "keras_collapse.passes.rewrite": "keras_collapse.graph.rewrite",
    "keras_collapse.prune": "keras_collapse.actions.prune",
    "keras_collapse.ramp": "keras_collapse.actions.ramp",
    "keras_collapse.recalibrate": "keras_collapse.actions.recalibrate",
    "keras_collapse.sample_inputs": "keras_collapse.graph.sample_inputs",
    "keras_collapse.units": "keras_collapse.surgery.units",
    "keras_collapse.verify": "keras_collapse.surgery.verify",
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
    module = _EXPORTS.get(name) or _INTERNALS.get(name)
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


def _new_module_name(fullname):
    """The current name of a module of an earlier release, or None."""
    if fullname in _MOVED:
        return _MOVED[fullname]
    package, _, leaf = fullname.rpartition(".")
    if package in _MOVED:  # a submodule of a moved package
        return f"{_MOVED[package]}.{leaf}"
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(f"{__name__}.") or not _new_module_name(fullname):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = _new_module_name(spec.name)
        warnings.warn(
            f"`{spec.name}` moved to `{new}`; the old path will be removed in "
            "a future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())

if "keras" in sys.modules:
    _register_serializables()
elif not any(isinstance(f, _KerasWatcher) for f in sys.meta_path):
    sys.meta_path.insert(0, _KerasWatcher())
