"""What ties a scheduled job to its CronJob and its runs on a cluster.

The renderer (kube/render.py) labels a job's CronJob, Jobs and pods with
JOB_LABEL (its `every:` as cron is spec/cron.py's, which validation also uses);
kubejobs.py, jobs/kube.py and runtime/kube_jobs.py read the runs back by them.
"""

from __future__ import annotations

JOB_LABEL = "ondeck.dev/job"  # on a CronJob, its Jobs and their pods: the job's name
INSTANTIATE = "cronjob.kubernetes.io/instantiate"  # `manual` on a Job made from a CronJob
