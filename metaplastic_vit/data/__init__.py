"""Datasets from their official layouts, task sequences, and on-device batching."""

from .loader import TaskData, TaskSet, build_tasks
from .sources import DATASETS, ImageData, load_dataset
from .tasks import Task, parse_task_sequence

__all__ = ["DATASETS", "ImageData", "Task", "TaskData", "TaskSet", "build_tasks", "load_dataset",
           "parse_task_sequence"]
