"""The trainer's ranks: Horovod when the run has several, plain TensorFlow when it has one (issue #26).

Horovod is built from source in the background on a fresh machine (infra/horovod_build.py), so a one-rank
trainer must not import it: :func:`start` imports ``horovod.tensorflow`` only when this process was launched
by horovodrun / mpirun (their environment variables, :data:`LAUNCHER_ENV`) or when gradients are accumulated
over several backward passes (Horovod's optimizer does that). Otherwise :class:`OneRank` answers the same
collective calls for a world of one (a broadcast returns its value, a gather or a sum is the value itself):
at one rank Horovod's allreduce is the identity too (``_allreduce_cond``: no allreduce when size is 1), so
the optimizer, the callbacks and the results are those of a Horovod run of one rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Set by horovodrun (Gloo: HOROVOD_RANK / HOROVOD_SIZE), Open MPI's mpirun, and Hydra-based mpiexec.
LAUNCHER_ENV = ("HOROVOD_RANK", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def wants_horovod(backward_passes: int, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this rank needs Horovod: launched by a multi-process launcher, or accumulating gradients."""
    return backward_passes > 1 or any(env.get(k) for k in LAUNCHER_ENV)


class OneRank:
    """The ``horovod.tensorflow`` calls the trainer makes, for a world of one rank (no Horovod imported)."""

    Sum = "sum"  # the op argument of allreduce (ignored: a sum over one rank is the value)

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1

    def local_rank(self) -> int:
        return 0

    def broadcast_object(self, obj: Any, root_rank: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def allreduce(self, tensor: Any, op: Any = None) -> Any:
        return tensor

    def allgather(self, tensor: Any) -> Any:
        return tensor

    def broadcast_variables(self, variables: Any, root_rank: int = 0) -> None:
        return None


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``comm`` answers the collective calls (``horovod.tensorflow`` or
    :class:`OneRank`), ``keras`` is ``horovod.tensorflow.keras`` (None without Horovod)."""

    comm: Any
    keras: Any

    @property
    def rank(self) -> int:
        return int(self.comm.rank())

    @property
    def size(self) -> int:
        return int(self.comm.size())

    @property
    def horovod(self) -> bool:
        return self.keras is not None

    def optimizer(self, opt: Any, fp16: bool, backward_passes: int) -> Any:
        """``opt`` wrapped in Horovod's DistributedOptimizer (gradients averaged over the ranks, compressed to
        float16 when ``fp16``, applied every ``backward_passes``), or ``opt`` itself for one rank."""
        if self.keras is None:
            return opt
        hvd = self.keras
        return hvd.DistributedOptimizer(opt, compression=hvd.Compression.fp16 if fp16 else hvd.Compression.none,
                                        backward_passes_per_step=backward_passes)

    def callbacks(self) -> list[Any]:
        """Horovod's Keras callbacks (none for one rank): rank 0's weights and optimizer state everywhere
        at the start; the training loss averaged over the ranks before anyone reads it."""
        if self.keras is None:
            return []
        return [self.keras.callbacks.BroadcastGlobalVariablesCallback(0), self.keras.callbacks.MetricAverageCallback()]


def start(backward_passes: int, env: Mapping[str, str] = os.environ) -> Ranks:
    """Initialise Horovod when :func:`wants_horovod` (call after TensorFlow's thread set-up), else one rank."""
    if not wants_horovod(backward_passes, env):
        return Ranks(OneRank(), None)
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    hvd.init()
    return Ranks(hvd_tf, hvd)
