"""Dagster wiring. The partition mappings and partitioned checks it relies on are marked beta / preview in
Dagster 1.13 (docs/dagster.md says which); that is said once there, not in every log line of every run."""

import warnings

from dagster import BetaWarning, PreviewWarning

warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
