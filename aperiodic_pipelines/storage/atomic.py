"""Storage's name for the shared leaf `aperiodic_pipelines.atomic` (temp file next to the target, then `os.replace`)."""

from aperiodic_pipelines.atomic import (
    TEMP_PREFIX,
    atomic_link,
    atomic_path,
    atomic_write,
    fsync_dir,
    remove_stale_temp_files,
)

__all__ = ["TEMP_PREFIX", "atomic_link", "atomic_path", "atomic_write", "fsync_dir", "remove_stale_temp_files"]
