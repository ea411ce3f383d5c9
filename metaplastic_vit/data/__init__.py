"""Datasets from their official layouts, task sequences, and on-device batching."""

from .loader import Batch, TaskData, TaskSet, build_tasks
from .sources import DATASETS, DatasetInfo, ImageData, load_dataset
from .tasks import Scenario, Task, parse_task_sequence

__all__ = ["DATASETS", "Batch", "DatasetInfo", "ImageData", "Scenario", "Task", "TaskData", "TaskSet", "build_tasks",
           "load_dataset", "parse_task_sequence"]
