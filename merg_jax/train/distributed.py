"""Multi-host start-up: `jax.distributed.initialize` from the environment.

Three ways in, tried in order:
* explicit: MERG_COORDINATOR (host:port), MERG_NUM_PROCESSES, MERG_PROCESS_ID
  (what the README's multi-node GPU recipe exports; also the localhost tests);
* JAX's own cluster detection (TPU pods, SLURM, Open MPI, GKE) when
  `distributed.auto` is on and such an environment is present;
* nothing: a single process sees its local devices.
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections

from configs.common import distributed_defaults

log = logging.getLogger(__name__)
_DONE = False


def _cluster_detected() -> bool:
    env = os.environ
    return any(k in env for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                                  "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID"))


def initialize(c: ml_collections.ConfigDict | None = None) -> None:
    """Idempotent; call before anything touches jax.devices()."""
    global _DONE
    if _DONE:
        return
    c = c or distributed_defaults()
    env = os.environ
    coordinator = c.coordinator or env.get("MERG_COORDINATOR", "")
    if coordinator:
        n = c.num_processes or int(env.get("MERG_NUM_PROCESSES", "0"))
        pid = c.process_id if c.process_id >= 0 else int(env.get("MERG_PROCESS_ID", "-1"))
        if n <= 0 or pid < 0:
            raise ValueError(f"coordinator {coordinator} is set but the process count ({n}) or id ({pid}) "
                             "is not; export MERG_NUM_PROCESSES and MERG_PROCESS_ID too")
        if c.cpu_collectives:
            jax.config.update("jax_cpu_collectives_implementation", c.cpu_collectives)
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)
    elif c.auto and _cluster_detected():
        jax.distributed.initialize()
    _DONE = True
    if jax.process_count() > 1:
        log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
