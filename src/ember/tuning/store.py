"""SQLite state of fine-tuning: uploaded files, datasets, jobs and job events, in one db file.

One object over the one file for the server, the CLI and the training worker. The tables are kept by two
stores that share the db plumbing (tuning_db.py): uploads (files, datasets) in upload_store.py, jobs and
their events in job_store.py.
"""

from __future__ import annotations

from ember.tuning.job_store import JobStore
from ember.tuning.upload_store import UploadStore


class TuningStore(UploadStore, JobStore):
    """Files, datasets, jobs and events in the SQLite db at `db_path` (created with its schema if missing)."""
