"""The surgery's graph passes in their order: one home, so that the surgery
and its dry runs (`keras_collapse.surgery.dry_run`) apply the same rules."""

from keras_collapse.surgery.passes.batchnorm import fold_batchnorms
from keras_collapse.surgery.passes.bias_channels import absorb_bias_maps
from keras_collapse.surgery.passes.bias_push import push_bias_maps
from keras_collapse.surgery.passes.dead_channels import remove_dead_channels
from keras_collapse.surgery.passes.identities import remove_identities
from keras_collapse.surgery.passes.journal import Journal
from keras_collapse.surgery.passes.merge import merge_runs
from keras_collapse.surgery.passes.residual import absorb_residuals

# Merging can open new merges (a residual absorbed into a conv makes it part of
# a longer run); a few rounds reach the fixed point on every model seen.
MAX_ROUNDS = 8


def simplify(graph, journal, *, cost_model, exact, merge=True, cut_dead_channels=True):
    """Removes identities, folds BatchNormalization, cuts dead channels,
    merges linear runs and residuals, carries border-aware biases in
    constant channels (where the cost model says so) or forward into later
    ones or into biases, in place. The graph still holds
    collapsible activations (their plain form is emission, not algebra).
    Running it again on its own result changes nothing."""
    remove_identities(graph, journal)
    fold_batchnorms(graph, journal)
    if cut_dead_channels:
        remove_dead_channels(graph, journal)
    if merge:
        for _ in range(MAX_ROUNDS):
            changed = merge_runs(graph, journal, cost_model, exact)
            changed += absorb_residuals(graph, journal)
            if changed and cut_dead_channels:
                # A merge can join a dead channel to a group the first cut
                # could not reach (through an activation now gone): cut
                # again, so that the result is a fixed point. Only the cuts
                # are journaled: the reasons for keeping were said above.
                again = Journal()
                changed += remove_dead_channels(graph, again)
                journal.done.extend(again.done)
            if not changed:
                break
        # Constant channels where the cost model prefers them to a layer; the
        # maps left are carried forward, which never costs anything.
        absorb_bias_maps(graph, journal, cost_model)
        push_bias_maps(graph, journal)
