"""The domain: one rule for months and days wherever they enter, one registry of exchanges, one owner of settings."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aperiodic_pipelines.defs.partitions import month_of, month_partition_key
from aperiodic_pipelines.domain.errors import InvalidDayError, InvalidMonthError, SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES, EXCHANGES_BY_NAME, exchange_of, exchange_of_slug
from aperiodic_pipelines.domain.intervals import TIMESTAMPS
from aperiodic_pipelines.domain.layout import daily_flow_key, flow_key, raw_key, seconds_key
from aperiodic_pipelines.domain.months import (
    check_day,
    check_month,
    days_of_month,
    last_closed_month,
    month_range,
    next_month,
    previous_month,
    shift_month,
)
from aperiodic_pipelines.domain.settings import VARIABLES, VARIABLES_BY_NAME, ConfigError, Settings
from aperiodic_pipelines.flow.grid import parse_month

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "aperiodic_pipelines"

BAD_MONTHS = ["2024-01\n", "0000-01", "2100-01", "2024-13", "2024-00", " 2024-01", "2024-1", "24-01", "2024/01",
              "", None, 202401]
GOOD_MONTHS = ["1900-01", "2024-01", "2099-12"]
BAD_DAYS = ["2024-02-30", "2024-02-29\n", "0000-01-01", "2024-13-01", "2100-01-01", "2024-1-01", "2024-01", None]


def _month_entries(tmp_path: Path) -> dict[str, object]:
    """Every place a month enters, as a callable of the month."""
    from aperiodic_pipelines.sources import fetch_month

    return {
        "domain.months.check_month": check_month,
        "flow.grid.parse_month": parse_month,
        "domain.layout.flow_key": lambda m: flow_key("exchange", "binance-futures", "1h", "BTCUSDT", m),
        "domain.layout.raw_key": lambda m: raw_key("binance-futures", "BTCUSDT", m),
        "domain.layout.seconds_key": lambda m: seconds_key("exchange", "binance-futures", "BTCUSDT", m),
        "defs.partitions.month_partition_key": month_partition_key,
        # The sources check the month before any download: no archive is asked for.
        "sources.fetch_month": lambda m: fetch_month("binance-futures", "BTCUSDT", m, dest=tmp_path),
    }


@pytest.mark.parametrize("month", BAD_MONTHS, ids=repr)
def test_a_bad_month_is_rejected_everywhere_it_enters_with_one_error_naming_it(month: object, tmp_path: Path) -> None:
    for where, enter in _month_entries(tmp_path).items():
        with pytest.raises(InvalidMonthError) as failure:
            enter(month)  # type: ignore[operator]
        assert repr(month) in str(failure.value), where
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written


def test_good_months_pass_every_check(tmp_path: Path) -> None:
    entries = {k: v for k, v in _month_entries(tmp_path).items() if k != "sources.fetch_month"}  # that one downloads
    for month in GOOD_MONTHS:
        for where, enter in entries.items():
            assert enter(month), where  # type: ignore[operator]
        assert parse_month(month) == (int(month[:4]), int(month[5:]))
        assert month_of(month_partition_key(month)) == month


def test_month_arithmetic() -> None:
    assert next_month("2024-12") == "2025-01" and previous_month("2024-01") == "2023-12"
    assert shift_month("2024-03", -15) == "2022-12"
    assert month_range("2023-11", "2024-02") == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert month_range("2024-02") == ["2024-02"]
    with pytest.raises(InvalidMonthError, match="2024-02..2024-01"):
        month_range("2024-02", "2024-01")
    with pytest.raises(InvalidMonthError):
        next_month("2099-12")  # 2100 is outside the rule, as everywhere
    assert last_closed_month(datetime(2024, 1, 1, 0, 30, tzinfo=UTC)) == "2023-12"


@pytest.mark.parametrize("day", BAD_DAYS, ids=repr)
def test_a_bad_day_is_rejected_naming_it(day: object) -> None:
    with pytest.raises(InvalidDayError) as failure:
        check_day(day)
    assert repr(day) in str(failure.value)
    with pytest.raises(InvalidDayError):
        daily_flow_key("exchange", "binance-futures", "1h", "BTCUSDT", day)  # type: ignore[arg-type]


def test_days_of_a_month() -> None:
    assert check_day("2024-02-29") == "2024-02-29"
    assert len(days_of_month("2024-02")) == 29 and len(days_of_month("2023-02")) == 28
    assert days_of_month("2024-12")[-1] == "2024-12-31"
    assert daily_flow_key("true", "hyperliquid-perps", "1m", "BTC", "2025-08-31") == (
        "flow/true/hyperliquid-perps/1m/BTC/2025-08-31.parquet"
    )


# --- exchanges ----------------------------------------------------------------------------------------------------


def test_one_registry_of_exchanges() -> None:
    assert EXCHANGES == ("binance-futures", "okx-perps", "hyperliquid-perps")
    for name in EXCHANGES:
        exchange = exchange_of(name)
        assert exchange is EXCHANGES_BY_NAME[name] and exchange_of_slug(exchange.slug) is exchange
        assert check_month(exchange.first_month) == exchange.first_month
        assert exchange.flow_job_name == f"{exchange.slug}_flow_bars_job"
        assert exchange.instruments_name == f"{exchange.slug}_instruments"
        # Tardis-format files carry arrival times for every exchange; the archives only where recorded.
        assert exchange.variants("tardis") == TIMESTAMPS
        assert exchange.variants("archive") == (TIMESTAMPS if name == "hyperliquid-perps" else ("exchange",))
    assert exchange_of_slug("kraken") is None
    with pytest.raises(SymbolError, match="unknown exchange 'kraken'; supported: binance-futures, okx-perps"):
        exchange_of("kraken")


# --- settings -----------------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"APERIODIC_[A-Z0-9]+(?:_[A-Z0-9]+)*")


def test_every_variable_the_package_names_is_a_declared_setting() -> None:
    named = {name for path in PACKAGE.rglob("*.py") for name in _VARIABLE.findall(path.read_text())}
    assert named, "the scan found no variable at all"
    assert named - set(VARIABLES_BY_NAME) == set()


SETTINGS_DOC = REPO / "docs" / "settings.md"
_TABLE_START, _TABLE_END = "| Variable | Default | Meaning |", "\n\n"


def settings_table() -> str:
    """The Markdown table of `VARIABLES` that docs/settings.md holds."""
    rows = [_TABLE_START, "|---|---|---|"]
    for variable in VARIABLES:
        default = f"`{variable.default}`" if variable.default is not None else "unset"
        meaning = variable.meaning.replace("|", "\\|") + (
            " (secret: never logged, kept out of `repr`)" if variable.secret else ""
        )
        rows.append(f"| `{variable.name}` | {default} | {meaning} |")
    return "\n".join(rows)


def write_settings_doc() -> None:
    """Replace the table in docs/settings.md by `settings_table()` (`python -m tests.test_domain`)."""
    text = SETTINGS_DOC.read_text()
    start = text.index(_TABLE_START)
    end = text.index(_TABLE_END, start)
    SETTINGS_DOC.write_text(text[:start] + settings_table() + text[end:])


def test_every_setting_is_documented_and_the_settings_table_matches() -> None:
    docs = (REPO / "README.md").read_text() + "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    assert [v.name for v in VARIABLES if v.name not in docs] == []
    assert settings_table() in SETTINGS_DOC.read_text(), "docs/settings.md is behind: python -m tests.test_domain"


def test_a_bad_value_names_its_variable() -> None:
    for name, value in (("APERIODIC_HTTP_ATTEMPTS", "many"), ("APERIODIC_HTTP_BACKOFF", "-1"),
                        ("APERIODIC_RATE_LIMIT_BURST", "0"), ("APERIODIC_ALLOW_MISSING_DAYS", "maybe"),
                        ("APERIODIC_SOURCE", "kafka")):
        with pytest.raises(ConfigError) as failure:
            Settings.from_env({name: value})
        assert name in str(failure.value) and repr(value) in str(failure.value)
    with pytest.raises(ConfigError, match="APERIODIC_TARDIS_URL"):
        Settings.from_env({"APERIODIC_SOURCE": "tardis"})


def test_defaults_come_from_the_one_table() -> None:
    settings = Settings.from_env({})
    assert settings.store.uri == VARIABLES_BY_NAME["APERIODIC_STORE"].default
    assert settings.http.attempts == int(VARIABLES_BY_NAME["APERIODIC_HTTP_ATTEMPTS"].default or 0)
    assert settings.alerts.dagster_url == VARIABLES_BY_NAME["APERIODIC_DAGSTER_URL"].default
    assert settings.alerts.webhook_url is None and settings.sources.source == "archive"


def test_secrets_stay_out_of_repr() -> None:
    secrets = {
        "APERIODIC_TARDIS_API_KEY": "tardis-key-not-a-real-secret",
        "APERIODIC_URL_SIGNING_KEY": "signing-key-not-a-real-secret-0123456789abcdef",
        "APERIODIC_ALERT_WEBHOOK_URL": "https://hooks.example/T000/not-a-real-token",
        "APERIODIC_CELERY_BROKER_URL": "redis://:broker-password-not-real@127.0.0.1:6379/0",
        "APERIODIC_CELERY_BACKEND_URL": "redis://:backend-password-not-real@127.0.0.1:6379/1",
    }
    assert {v.name for v in VARIABLES if v.secret} == set(secrets)
    settings = Settings.from_env({**secrets, "APERIODIC_TARDIS_URL": "/srv/tardis"})
    text = repr(settings)
    assert [name for name, value in secrets.items() if value in text] == []
    assert settings.sources.tardis_api_key == secrets["APERIODIC_TARDIS_API_KEY"]  # kept, only not shown
    assert settings.alerts.webhook_url == secrets["APERIODIC_ALERT_WEBHOOK_URL"]
    assert settings.celery.require_broker() == (secrets["APERIODIC_CELERY_BROKER_URL"],
                                                secrets["APERIODIC_CELERY_BACKEND_URL"])


# Reads of APERIODIC_* variables outside domain/settings.py that remain, by file and variable, with who removes
# them (none left); an entry that no longer occurs fails the test, so the list only shrinks.
KNOWN_ENV_READS: dict[tuple[str, str], str] = {}


def _environment_reads() -> set[tuple[str, str]]:
    """(file, variable) of every read of an APERIODIC_* variable from the environment outside domain/settings.py:
    `os.environ.get`, `os.getenv`, `os.environ[...]` (not assignments) and `env.get` on an environment mapping,
    with the name written out or held in a module constant."""
    import ast

    reads = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "domain" / "settings.py":
            continue
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            argument = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                base = ast.unparse(node.func.value)
                if node.func.attr == "getenv" or (node.func.attr in ("get", "pop") and
                                                  ("environ" in base or base in ("env", "environ", "environment"))):
                    argument = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and "environ" in ast.unparse(node.value):
                argument = node.slice
            if isinstance(argument, ast.Constant):
                name = argument.value
            elif isinstance(argument, ast.Name):
                name = constants.get(argument.id)
            else:
                continue
            if isinstance(name, str) and _VARIABLE.fullmatch(name):
                reads.add((str(path.relative_to(REPO)), name))
    return reads


def test_only_the_settings_read_aperiodic_variables_from_the_environment() -> None:
    reads = _environment_reads()
    unexpected = sorted(reads - set(KNOWN_ENV_READS))
    stale = sorted(set(KNOWN_ENV_READS) - reads)
    assert not unexpected, f"read these through domain.settings.Settings instead: {unexpected}"
    assert not stale, f"no longer read outside the settings, remove from KNOWN_ENV_READS: {stale}"
    assert not any(path.startswith(("aperiodic_pipelines/defs/", "aperiodic_pipelines/demo")) for path, _ in reads)


if __name__ == "__main__":
    write_settings_doc()


def test_settings_are_hashable_so_definitions_can_be_cached_on_them() -> None:
    settings = Settings.from_env({"APERIODIC_DAILY_HOUR_OKX": "11"})
    assert hash(settings) == hash(Settings.from_env({"APERIODIC_DAILY_HOUR_OKX": "11"}))
    assert settings.daily.schedule_hour("okx-perps") == 11 and settings.daily.schedule_hour("okx-perps", "tardis") == 7
