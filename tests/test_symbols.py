"""Atlas symbology: parsing, formatting and the native-id mapping of each exchange."""

from __future__ import annotations

from datetime import date

import pytest

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.symbols import (
    HYPERLIQUID_K_COINS,
    AtlasSymbol,
    parse_symbol,
    resolve_symbol,
    to_atlas,
    to_native,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spot-BTC-USDT", AtlasSymbol("spot", "BTC", "USDT")),
        ("perpetual-BTC-USDT:USDT", AtlasSymbol("perpetual", "BTC", "USDT", "USDT")),
        ("perpetual-BTC-USD:BTC", AtlasSymbol("perpetual", "BTC", "USD", "BTC")),
        ("future-BTC-USDT:USDT-20260327", AtlasSymbol("future", "BTC", "USDT", "USDT", date(2026, 3, 27))),
        ("perpetual-XYZ:AAPL-USDC:USDC", AtlasSymbol("perpetual", "XYZ:AAPL", "USDC", "USDC")),
        ("perpetual-1000PEPE-USDT:USDT", AtlasSymbol("perpetual", "1000PEPE", "USDT", "USDT")),
    ],
)
def test_parse_and_round_trip(text: str, expected: AtlasSymbol) -> None:
    parsed = parse_symbol(text)
    assert parsed == expected
    assert str(parsed) == text
    assert parse_symbol(str(parsed)) == parsed


def test_inverse_flag() -> None:
    assert parse_symbol("perpetual-BTC-USD:BTC").is_inverse
    assert not parse_symbol("perpetual-BTC-USDT:USDT").is_inverse


@pytest.mark.parametrize(
    "text",
    [
        "",
        "BTCUSDT",
        "perp-BTC-USDT:USDT",  # unknown type
        "perpetual-BTC-USDT",  # perpetual without margin
        "spot-BTC-USDT:USDT",  # spot with margin
        "future-BTC-USDT:USDT",  # future without expiry
        "future-BTC-USDT:USDT-20261345",  # not a date
        "future-BTC-USDT:USDT-2026032",  # not YYYYMMDD
        "perpetual-btc-USDT:USDT",  # lower case
        "perpetual-BTC-USDT:USDT:USDT",
        "perpetual-:AAPL-USDC:USDC",
        "perpetual-BTC -USDT:USDT",
    ],
)
def test_malformed_symbols_raise_one_clear_error(text: str) -> None:
    with pytest.raises(SymbolError, match=r"(?i)atlas symbol|expiry|perpetual|spot|future"):
        parse_symbol(text)


def test_malformed_message_shows_format_and_example() -> None:
    with pytest.raises(SymbolError) as info:
        parse_symbol("BTC/USDT")
    message = str(info.value)
    assert "'BTC/USDT'" in message
    assert "<type>-<BASE>-<QUOTE>" in message
    assert "perpetual-BTC-USDT:USDT" in message


MAPPINGS = [
    ("binance-futures", "BTCUSDT", "perpetual-BTC-USDT:USDT"),
    ("binance-futures", "BTCUSDC", "perpetual-BTC-USDC:USDC"),
    ("binance-futures", "ETHUSDT", "perpetual-ETH-USDT:USDT"),
    ("binance-futures", "1000PEPEUSDT", "perpetual-1000PEPE-USDT:USDT"),
    # bases that themselves end in a quote-like string: only one suffix is the quote
    ("binance-futures", "USDCUSDT", "perpetual-USDC-USDT:USDT"),
    ("binance-futures", "USDTUSDC", "perpetual-USDT-USDC:USDC"),
    ("binance-futures", "BTCUSDT_240329", "future-BTC-USDT:USDT-20240329"),
    ("okx-perps", "BTC-USDT-SWAP", "perpetual-BTC-USDT:USDT"),
    ("okx-perps", "ETH-USDC-SWAP", "perpetual-ETH-USDC:USDC"),
    ("okx-perps", "BTC-USD-SWAP", "perpetual-BTC-USD:BTC"),
    ("hyperliquid-perps", "BTC", "perpetual-BTC-USDC:USDC"),
    ("hyperliquid-perps", "kPEPE", "perpetual-KPEPE-USDC:USDC"),
    ("hyperliquid-perps", "kSHIB", "perpetual-KSHIB-USDC:USDC"),
    ("hyperliquid-perps", "kBONK", "perpetual-KBONK-USDC:USDC"),
    # a real coin whose name starts with K is not a k-coin
    ("hyperliquid-perps", "KAITO", "perpetual-KAITO-USDC:USDC"),
    ("hyperliquid-perps", "xyz:AAPL", "perpetual-XYZ:AAPL-USDC:USDC"),
]


@pytest.mark.parametrize(("exchange", "native", "atlas"), MAPPINGS)
def test_native_mapping_both_ways(exchange: str, native: str, atlas: str) -> None:
    assert to_atlas(exchange, native) == atlas
    assert to_native(exchange, atlas) == native
    assert to_native(exchange, parse_symbol(atlas)) == native
    assert resolve_symbol(exchange, native) == (atlas, native)
    assert resolve_symbol(exchange, atlas) == (atlas, native)


def test_every_k_coin_round_trips() -> None:
    for coin in HYPERLIQUID_K_COINS:
        atlas = to_atlas("hyperliquid-perps", coin)
        assert atlas == f"perpetual-{coin.upper()}-USDC:USDC"
        assert to_native("hyperliquid-perps", atlas) == coin


@pytest.mark.parametrize(
    ("exchange", "native"),
    [
        ("binance-futures", "BTCBUSD"),  # quote not read by this platform
        ("binance-futures", "USDT"),  # no base
        ("binance-futures", "btcusdt"),
        ("binance-futures", "BTC-USDT"),
        ("binance-futures", "BTCUSDT_2403"),
        ("okx-perps", "BTC-USDT"),  # spot id
        ("okx-perps", "BTC-USDT-240329"),  # dated future, not a swap
        ("okx-perps", "BTC-EUR-SWAP"),
        ("hyperliquid-perps", "@107"),  # spot index
        ("hyperliquid-perps", "PURR/USDC"),
        ("hyperliquid-perps", "btc"),
        ("hyperliquid-perps", "kFOO"),  # unknown k-coin would not map back
        ("hyperliquid-perps", "XYZ:AAPL"),  # dex names are lower case
        ("hyperliquid-perps", "xyz:"),
        ("hyperliquid-perps", " BTC"),
    ],
)
def test_unsupported_native_ids(exchange: str, native: str) -> None:
    with pytest.raises(SymbolError) as info:
        to_atlas(exchange, native)
    message = str(info.value)
    assert repr(native) in message
    assert "supported" in message or "known" in message


@pytest.mark.parametrize(
    ("exchange", "atlas"),
    [
        ("binance-futures", "spot-BTC-USDT"),
        ("binance-futures", "perpetual-BTC-USD:BTC"),  # inverse lives on binance-futures-cm
        ("binance-futures", "perpetual-BTC-USDT:USDC"),
        ("okx-perps", "future-BTC-USDT:USDT-20240329"),
        ("okx-perps", "perpetual-BTC-USD:USD"),
        ("hyperliquid-perps", "perpetual-BTC-USDT:USDT"),
        ("hyperliquid-perps", "spot-PURR-USDC"),
    ],
)
def test_symbols_an_exchange_does_not_list(exchange: str, atlas: str) -> None:
    with pytest.raises(SymbolError, match=f"{exchange} has no instrument for '{atlas}'"):
        to_native(exchange, atlas)


def test_unknown_exchange_lists_supported_ones() -> None:
    for call in (lambda: to_native("bybit", "perpetual-BTC-USDT:USDT"), lambda: to_atlas("bybit", "BTCUSDT")):
        with pytest.raises(SymbolError) as info:
            call()
        for exchange in EXCHANGES:
            assert exchange in str(info.value)


def test_symbol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_symbol("nonsense")


@pytest.mark.parametrize(
    ("exchange", "native", "rule"),
    [
        ("binance-futures", "btcusdt", "BASEQUOTE_YYMMDD"),
        ("okx-perps", "BTC-USDT", "BASE-QUOTE-SWAP"),
        ("hyperliquid-perps", "@107", "dex:ASSET"),
    ],
)
def test_an_unsupported_native_id_says_what_is_supported_and_where_to_look(exchange: str, native: str,
                                                                            rule: str) -> None:
    """Issue 14: the message gives the exchange's rule, its examples, and where the listed instruments are."""
    from aperiodic_pipelines.domain.exchanges import exchange_of

    with pytest.raises(SymbolError) as info:
        to_atlas(exchange, native)
    message = str(info.value)
    assert message.startswith(f"unsupported {exchange} instrument id {native!r}: {exchange} supports ")
    assert rule in message and exchange_of(exchange).native_examples in message
    assert "aperiodic-pipelines instruments list" in message and "/api/v1/metadata/symbols" in message


def test_an_atlas_symbol_an_exchange_does_not_list_says_what_it_lists() -> None:
    with pytest.raises(SymbolError) as info:
        to_native("hyperliquid-perps", "perpetual-BTC-USDT:USDT")
    message = str(info.value)
    assert message.startswith("hyperliquid-perps has no instrument for 'perpetual-BTC-USDT:USDT': hyperliquid-perps "
                              "supports perpetuals quoted and margined in USDC")
    assert "/api/v1/metadata/symbols" in message
