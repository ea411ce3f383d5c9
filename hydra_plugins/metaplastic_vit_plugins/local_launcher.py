"""`hydra/launcher=local`: sweep jobs in parallel on one machine, each in its own process, spread over its GPUs.

Jobs run through submitit's local executor (a process per job, with timeouts and requeueing), each a `LocalJob`
that composes its config and runs the task with Hydra's own functions. At most `max_parallel` run at once: by
default cores // cpus_per_task on a CPU machine, or GPUs x jobs_per_gpu when `gpus` lists devices (null: every
GPU torch sees). Each job sees only its own GPU through CUDA_VISIBLE_DEVICES, so several small jobs can share
one GPU (`jobs_per_gpu`). A new job starts as soon as a slot frees up. Interrupting the sweep stops its running
jobs, which keep their last checkpoint. The launcher's config schema is `LocalLauncherConf`, registered as
`hydra/launcher: local` when Hydra discovers the plugin.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class Slot(NamedTuple):
    """Where a job runs: its number, and the GPU it may use (None: the CPU only)."""

    index: int
    gpu: int | None


def slots(gpus: Sequence[int], jobs_per_gpu: int, max_parallel: int | None, cores: int, cpus_per_task: int
          ) -> list[Slot]:
    """The slots jobs run in. With GPUs: jobs_per_gpu per GPU, GPUs filled round-robin (job k of a full
    batch on GPU k mod n); without: cores // cpus_per_task. `max_parallel` caps either."""
    if gpus:
        found = [Slot(i, gpus[i % len(gpus)]) for i in range(len(gpus) * max(1, jobs_per_gpu))]
    else:
        found = [Slot(i, None) for i in range(max(1, cores // max(1, cpus_per_task)))]
    return found[:max_parallel] if max_parallel else found


def visible_gpus(gpus: Sequence[int] | None) -> list[int]:
    """The GPUs to spread jobs over: the configured ones, else every CUDA device this process sees."""
    if gpus is not None:
        return list(gpus)
    import torch

    return list(range(torch.cuda.device_count()))


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Processes started inside ignore SIGINT: a job's submitit controller then leaves the terminal's Ctrl-C to
    the job itself (which stops cleanly) instead of dying with a KeyboardInterrupt traceback; the launcher
    stops controllers with SIGTERM, which they forward to their job."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class LocalLauncherConf:
    """hydra/launcher=local: the parallel local launcher's settings."""

    _target_: str = "hydra_plugins.metaplastic_vit_plugins.local_launcher.ParallelLocalLauncher"
    # threads of each job, and the job's share of the cores (METAPLASTIC_LOCAL_CPUS, else 1)
    cpus_per_task: Any = "${oc.decode:${oc.env:METAPLASTIC_LOCAL_CPUS,1}}"
    gpus: list[int] | None = None  # null: every GPU torch sees (none on a CPU machine)
    jobs_per_gpu: int = 1  # jobs sharing one GPU at a time
    max_parallel: int | None = None  # null: as many as the slots above; a number caps it
    timeout_min: int = 10080  # a week: a job is signalled and requeued (max_num_timeout times) when it runs longer
    max_num_timeout: int = 3
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    poll_seconds: float = 0.5  # how often finished jobs are looked for


@dataclass
class LocalJob:
    """One sweep job as submitit runs it in its own process: compose the job's config from the sweep's and run
    the task in the job's directory (Hydra's `run_job`). Requeued as it is when submitit checkpoints it."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig  # the sweep's
    overrides: list[str]
    number: int
    singleton_state: dict[Any, Any]

    def __call__(self) -> JobReturn:  # noqa: D102
        import submitit

        Singleton.set_state(self.singleton_state)
        setup_globals()
        job_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(self.overrides))
        with open_dict(job_config.hydra.job):
            job_config.hydra.job.id = submitit.JobEnvironment().job_id
            job_config.hydra.job.num = self.number
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=job_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Run the same job again when submitit requeues it (it resumes from the run's own checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class ParallelLocalLauncher(Launcher):
    """Runs sweep jobs on this machine in parallel slots (see the module's doc)."""

    def __init__(self, cpus_per_task: int = 1, gpus: Sequence[int] | None = None, jobs_per_gpu: int = 1,
                 max_parallel: int | None = None, timeout_min: int = 10080, max_num_timeout: int = 3,
                 submitit_folder: str = ".submitit/%j", poll_seconds: float = 0.5) -> None:
        self.cpus_per_task = cpus_per_task
        self.gpus = None if gpus is None else list(gpus)
        self.jobs_per_gpu = jobs_per_gpu
        self.max_parallel = max_parallel
        self.timeout_min, self.max_num_timeout = timeout_min, max_num_timeout
        self.submitit_folder = submitit_folder
        self.poll_seconds = poll_seconds
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:  # noqa: D102
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run every job, at most one per slot at a time; results in the order of `job_overrides`."""
        import submitit

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        free = slots(visible_gpus(self.gpus), self.jobs_per_gpu, self.max_parallel, len(os.sched_getaffinity(0)),
                     self.cpus_per_task)
        log.info("local launcher: %d jobs, at most %d at once, in %s", len(job_overrides), len(free), sweep_dir)
        executor = submitit.LocalExecutor(folder=self.submitit_folder, max_num_timeout=self.max_num_timeout)
        pending = list(enumerate(job_overrides))
        running: dict[int, tuple[Any, Slot]] = {}
        results: dict[int, JobReturn] = {}
        try:
            while pending or running:
                while pending and free:
                    k, overrides = pending.pop(0)
                    slot = free.pop(0)
                    idx = initial_job_idx + k
                    gpu = [] if slot.gpu is None else [slot.gpu]
                    executor.update_parameters(timeout_min=self.timeout_min, visible_gpus=gpu, gpus_per_node=len(gpu))
                    log.info("\t#%d (slot %d%s) : %s", idx, slot.index,
                             "" if slot.gpu is None else f", GPU {slot.gpu}", " ".join(filter_overrides(overrides)))
                    job = LocalJob(self.hydra_context, self.task_function, self.config, list(overrides), idx,
                                   Singleton.get_state())
                    with _sigint_ignored_by_children():
                        running[k] = (executor.submit(job), slot)
                for k, (job, slot) in list(running.items()):
                    if job.done():
                        results[k] = job.result()
                        free.append(slot)
                        del running[k]
                time.sleep(self.poll_seconds)
        except BaseException:
            for job, _ in running.values():  # stop them: each keeps its last checkpoint and resumes next time
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(job.job_id), signal.SIGTERM)  # a local job's id is its controller's pid
            raise
        return [results[k] for k in range(len(job_overrides))]


ConfigStore.instance().store(group="hydra/launcher", name="local", node=LocalLauncherConf, provider="metaplastic_vit")
