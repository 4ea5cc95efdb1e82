"""Narrow fixes that make `model.fit` train correctly under tf.distribute in Keras 3.

Upstream: keras-team/keras#20585 (model.fit under MultiWorkerMirroredStrategy fails). Both
fixes are in keras/src/backend/tensorflow/trainer.py:
1. `_maybe_symbolic_build` averages the first PerReplica *data* batch with
   `strategy.reduce("MEAN", ...)`, which fails for integer token ids across workers, and across the
   devices of one machine (MirroredStrategy over two GPUs: "token_ids must be integers"); any one
   replica's batch has the right structure, so we take the first local one.
2. `reduce_per_replica` reduces metrics with `axis=0`, which fails for scalars; rank-0
   values are reduced with `axis=None`.
Remove this module when the upstream issue is fixed.
"""

from __future__ import annotations

import functools

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

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


def patch_keras_for_tf_distribute() -> None:
    """Apply both fixes (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _first_local_batch
    tf_trainer.reduce_per_replica = _reduce_scalars_without_axis(tf_trainer.reduce_per_replica)
    _PATCHED = True
