"""aperiodic-pipelines: public crypto perpetual trade archives → flow bars, orchestrated by Dagster."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aperiodic-pipelines")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

SCHEMA_VERSION = "2"  # 2: `time` is Datetime[us] without a zone (UTC wall clock), spec §2
