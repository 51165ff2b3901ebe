"""The Celery task names and queues every service uses, in one place.

The web's admin API and ``postergenre train`` send tasks by these names (never importing the task
code: TensorFlow, Scrapy), the workers register their tasks under them, and ``shared.celery_app``
routes each to its queue. A module of constants only: importing it creates no Celery app.
"""

from __future__ import annotations

TRAIN_TASK = "postergenre.train"
CRAWL_TASK = "postergenre.crawl"
DATASET_TASK = "postergenre.dataset"

GPU_QUEUE = "gpu"
CRAWL_QUEUE = "crawl"
DATASET_QUEUE = "dataset"

TASK_QUEUES: dict[str, str] = {TRAIN_TASK: GPU_QUEUE, CRAWL_TASK: CRAWL_QUEUE, DATASET_TASK: DATASET_QUEUE}
