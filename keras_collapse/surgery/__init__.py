"""The surgery: merge the linear runs of a model into fewer layers.

`entry` is the entry point (`surgery(model)`); `passes/` the graph rewrites
it runs; `verify` the check that the result computes the same; `cost_models`
what a merge is worth; `units` the merges one linearization decision can buy
(`merge_units`) and `inspection` what a model could gain at most.
"""

from keras_collapse.surgery.entry import surgery as surgery
