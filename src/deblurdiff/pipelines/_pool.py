"""Sizing the synthesis actor pool from ``ray.cluster_resources()``.

Ray glue, kept in one place. Two rules learned the hard way:

- Never ask for more CPU than the cluster has: a pool whose actors take every CPU leaves none for
  the read/decode tasks upstream, and a pool that cannot start waits forever (a pool of 2 one-CPU
  actors beside the readers on a 2-CPU node hung). So callers name the CPUs other stages need
  (``reserve_cpus``), and when more workers are asked for than CPUs are free they share them
  (fractional ``num_cpus``) instead of waiting. The pool is then fixed-size (it fits by
  construction); callers that wait for it to start do so with a timeout.
- Results must not depend on the pool: CPU actors run torch on one thread each (parallelism comes
  from actors), so ``--workers 1`` and ``--workers 4`` make the same bytes.
- Each actor is held to its own threads (``actor_env``): OpenMP/MKL pools sized to the actor's CPUs,
  not to the machine, so two actors on two cores do not oversubscribe each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deblurdiff.errors import UsageError

logger = logging.getLogger(__name__)


def actor_env(threads: int) -> dict[str, str]:
    """Environment of a synthesis actor process (set at start: the libraries read it once).

    - ``OMP/MKL/OPENBLAS_NUM_THREADS``: the math libraries' own pools get the actor's threads only.
    - ``THP_MEM_ALLOC_ENABLE``: torch puts tensors >= 2 MB on transparent huge pages. A 512² sample
      allocates a dozen 3-12 MB tensors; on 4 KB pages their first touch cost ~2,400 page faults a pair
      (~30 % of its CPU in this VM), on huge pages ~300 (measured, issue 25).
    """
    n = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "THP_MEM_ALLOC_ENABLE": "1"}


@dataclass(frozen=True)
class ActorPool:
    size: int  # actors
    num_cpus: float  # logical CPUs per actor
    num_gpus: float  # GPUs per actor (0 on CPU clusters)
    threads: int  # torch intra-op threads per actor

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def strategy(self, *, autoscale: bool = False):
        """``ActorPoolStrategy`` for ``map_batches(compute=...)``.

        Fixed size (min = max, the default): the pool fits the cluster by construction, so there is
        nothing to autoscale. Two work items in flight per actor: the next shard is already queued
        when one finishes (with one, the dispatch gap cost ~15% of 2 actors' time on short shards),
        and no more, so an idle actor rarely finds work queued behind a busy one.
        ``autoscale``: from one actor up to ``size`` with Ray Data's default queueing (streams whose
        input size is unknown, e.g. training)."""
        import ray.data

        if autoscale:
            return ray.data.ActorPoolStrategy(min_size=1, max_size=self.size)
        return ray.data.ActorPoolStrategy(min_size=self.size, max_size=self.size, max_tasks_in_flight_per_actor=2)

    def remote_args(self) -> dict:
        # (Ray Data places actors with its default SPREAD strategy: different nodes first.)
        args = {"num_cpus": self.num_cpus, "runtime_env": {"env_vars": actor_env(self.threads)}}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        return args


def size_pool(workers: int | None, n_items: int | None = None, *, use_gpu: bool | None = None,
              reserve_cpus: float = 0.0) -> ActorPool:
    """An actor pool for the connected cluster.

    workers: actors wanted (None: one per free CPU, or one per GPU). n_items: work items (no more
    actors than that). use_gpu: None = when the cluster has GPUs. reserve_cpus: CPUs to leave free
    for other stages.
    """
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus >= 1
    if use_gpu and gpus <= 0:
        raise UsageError("GPU synthesis was requested but the Ray cluster has no GPU")
    free = max(cpus - reserve_cpus, 0.0)
    size = int(workers or max(1, int(gpus) if use_gpu else int(free)))
    if n_items is not None:
        size = max(1, min(size, n_items))
    if use_gpu:
        num_gpus = min(1.0, gpus / size)
        # CPU for decode and PNG encode next to each GPU actor, leaving the reserve to the readers.
        num_cpus = max(1.0, float(int(free / size))) if free >= size else max(free / size, 0.1)
        threads = max(1, int(num_cpus))
    else:
        num_gpus = 0.0
        num_cpus = min(1.0, free / size) if free > 0 else 0.25
        threads = 1
    pool = ActorPool(size=size, num_cpus=round(num_cpus, 3), num_gpus=num_gpus, threads=threads)
    logger.info("synthesis actor pool: %s (cluster: %.0f CPU, %.0f GPU)", pool, cpus, gpus)
    return pool
