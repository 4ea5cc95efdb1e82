"""Narrow fixes that make `model.fit` train correctly under tf.distribute in Keras 3.

Upstream: keras-team/keras#20585 (model.fit under MultiWorkerMirroredStrategy fails). Both
fixes are in keras/src/backend/tensorflow/trainer.py:
1. `_maybe_symbolic_build` averages the first PerReplica *data* batch with
   `strategy.reduce("MEAN", ...)`, which fails for integer token ids across workers; any one
   replica's batch has the right structure, so we take the first local one.
2. `reduce_per_replica` reduces metrics with `axis=0`, which fails for scalars; rank-0
   values are reduced with `axis=None`.
Remove this module when the upstream issue is fixed.

And one for every multi-replica strategy: Keras applies `global_clipnorm` to each replica's
*partial* gradient before the all-reduce (base_optimizer.apply -> _clip_gradients, then
_backend_update_step sums), so each replica clips its own share and the sum can exceed the
clip norm. `clip_by_true_global_norm` measures the norm of the summed gradient instead.
"""

from __future__ import annotations

import functools

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer
from keras.src import tree

_PATCHED = False


def _first_local_batch(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_scalars_without_axis(original):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        multi_worker = tf_trainer._collective_all_reduce_multi_worker(strategy)
        if not multi_worker or reduction not in ("mean", "auto"):
            return original(values, strategy, reduction)

        def mean(v):
            rank = strategy.experimental_local_results(v)[0].shape.rank
            return strategy.reduce("MEAN", v, axis=None if rank == 0 else 0)

        return tree.map_structure(mean, values)

    return reduce_per_replica


def patch_keras_for_multiworker() -> None:
    """Apply both fixes (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _first_local_batch
    tf_trainer.reduce_per_replica = _reduce_scalars_without_axis(tf_trainer.reduce_per_replica)
    _PATCHED = True


def clip_by_true_global_norm(optimizer) -> None:
    """Make `optimizer` clip by the norm of the gradient summed over replicas (see module doc)."""
    clipnorm, keras_clip = optimizer.global_clipnorm, optimizer._clip_gradients
    if not clipnorm:
        return

    def clip(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return keras_clip(grads)
        norm = tf.linalg.global_norm(context.all_reduce("SUM", grads))
        scale = clipnorm / tf.maximum(norm, clipnorm)  # the factor tf.clip_by_global_norm applies
        return [g * tf.cast(scale, g.dtype) for g in grads]

    optimizer._clip_gradients = clip
