"""Unique layer names: Keras requires them within a model.

One rule for every place that makes names (`Graph.to_model`, the passes,
`make_collapsible`): a wanted name if free, else the first free alternative,
else the last candidate with a suffix `_1`, `_2`, ...
"""


class Names:
    """A book of taken names that hands out free ones.

    Args:
        taken: names already in use.
        reserved: names free only to their owner (`take(..., owner=name)`):
            `to_model` keeps the model's output names for the output layers.

    Example:

    >>> from keras_collapse.graph.names import Names
    >>> names = Names(taken={"dense"})
    >>> names.take("dense"), names.take("dense"), names.take("conv")
    ('dense_1', 'dense_2', 'conv')
    >>> names.take("c", alternatives=["block_c"], keep=False)
    'c'
    """

    def __init__(self, taken=(), reserved=()):
        self.taken = set(taken)
        self.reserved = set(reserved) - {None}

    def is_free(self, name, owner=None):
        return name not in self.taken and (name not in self.reserved or name == owner)

    def take(self, name, alternatives=(), owner=None, keep=True):
        """The first free of `name` and `alternatives`, else the last of
        them with the first free suffix; recorded as taken unless
        `keep=False` (a name asked for, not yet used)."""
        candidates = [name, *alternatives]
        free = next((c for c in candidates if self.is_free(c, owner)), None)
        i = 1
        while free is None:
            candidate = f"{candidates[-1]}_{i}"
            free = candidate if self.is_free(candidate, owner) else None
            i += 1
        if keep:
            self.taken.add(free)
        return free
