"""Atlas symbology (github.com/aperiodic-io/atlas) and the mapping to each exchange's native instrument ids.

An Atlas symbol reads `<type>-<BASE>-<QUOTE>[:<MARGIN>][-<YYYYMMDD>]`:

- `spot-BTC-USDT` (no margin, no expiry)
- `perpetual-BTC-USDT:USDT` (linear), `perpetual-BTC-USD:BTC` (inverse: margined in the base)
- `future-BTC-USDT:USDT-20240329` (margin and expiry)

A base may itself contain `:`, as Hyperliquid HIP-3 markets do (`perpetual-XYZ:AAPL-USDC:USDC`).
Bases and quotes are upper case, as Atlas normalises them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import exchange_of

SYMBOL_TYPES: tuple[str, ...] = ("spot", "perpetual", "future")

# Quote assets of Binance USDⓈ-M futures that this platform reads.
BINANCE_QUOTES: tuple[str, ...] = ("USDT", "USDC")
OKX_LINEAR_QUOTES: tuple[str, ...] = ("USDT", "USDC")
OKX_INVERSE_QUOTE = "USD"
HYPERLIQUID_QUOTE = "USDC"

# Hyperliquid lists some low-priced coins as 1000-unit contracts with a lower-case `k` prefix (kPEPE = 1000 PEPE).
# Atlas upper-cases the whole id (KPEPE), so the reverse mapping needs the list: a plain `K` prefix (KAITO, KAS)
# must stay as it is.
HYPERLIQUID_K_COINS: frozenset[str] = frozenset(
    {"kPEPE", "kSHIB", "kBONK", "kFLOKI", "kLUNC", "kDOGS", "kNEIRO"}
)
_K_COIN_BY_ATLAS_BASE = {coin.upper(): coin for coin in HYPERLIQUID_K_COINS}

_ATLAS_PATTERN = re.compile(
    r"^(?P<type>[a-z]+)-(?P<base>[^\s-]+)-(?P<quote>[^\s:-]+)(?::(?P<margin>[^\s:-]+))?(?:-(?P<expiry>[^\s-]+))?$"
)
_ATLAS_EXAMPLES = "e.g. spot-BTC-USDT, perpetual-BTC-USDT:USDT, future-BTC-USDT:USDT-20240329"

# What each exchange's native ids look like and which Atlas symbols they map to: the whole rule, for messages.
_NATIVE_EXAMPLES = {
    "binance-futures": "USDⓈ-M linear contracts quoted and margined in USDT or USDC, written BASEQUOTE for a "
    "perpetual (BTCUSDT ↔ perpetual-BTC-USDT:USDT) and BASEQUOTE_YYMMDD for a quarterly future "
    "(BTCUSDT_240329 ↔ future-BTC-USDT:USDT-20240329), in upper case",
    "okx-perps": "perpetual swaps written BASE-QUOTE-SWAP in upper case: linear in USDT or USDC "
    "(BTC-USDT-SWAP ↔ perpetual-BTC-USDT:USDT), inverse in USD (BTC-USD-SWAP ↔ perpetual-BTC-USD:BTC)",
    "hyperliquid-perps": "perpetuals quoted and margined in USDC, written as the coin: upper case (BTC ↔ "
    "perpetual-BTC-USDC:USDC), a k-prefixed 1000-unit coin (kPEPE ↔ perpetual-KPEPE-USDC:USDC) or a HIP-3 market "
    "dex:ASSET (xyz:AAPL ↔ perpetual-XYZ:AAPL-USDC:USDC); no spot (@107, PURR/USDC)",
}
_WHERE_TO_LOOK = (
    "Registered instruments: `aperiodic-pipelines instruments list`; published ones: GET /api/v1/metadata/symbols"
)


def _supported(exchange: str) -> str:
    """What `exchange` supports: the rule, examples from the exchange registry, and where to look."""
    examples = exchange_of(exchange).native_examples
    return f"{exchange} supports {_NATIVE_EXAMPLES[exchange]}; e.g. {examples}. {_WHERE_TO_LOOK}"


@dataclass(frozen=True)
class AtlasSymbol:
    """One parsed Atlas symbol; `str()` gives back the canonical text."""

    type: str
    base: str
    quote: str
    margin: str | None = None
    expiry: date | None = None

    def __post_init__(self) -> None:
        if self.type not in SYMBOL_TYPES:
            raise SymbolError(f"unknown Atlas symbol type {self.type!r}: supported are {', '.join(SYMBOL_TYPES)}")
        if self.type == "spot" and (self.margin is not None or self.expiry is not None):
            raise SymbolError(f"a spot symbol has no margin and no expiry ({_ATLAS_EXAMPLES})")
        if self.type == "perpetual" and (self.margin is None or self.expiry is not None):
            raise SymbolError(f"a perpetual symbol has a margin and no expiry ({_ATLAS_EXAMPLES})")
        if self.type == "future" and (self.margin is None or self.expiry is None):
            raise SymbolError(f"a future symbol has a margin and an expiry ({_ATLAS_EXAMPLES})")
        for part in (self.base, self.quote, self.margin or "X"):
            if not part or part != part.upper() or re.search(r"[\s-]", part):
                raise SymbolError(f"Atlas symbol parts are non-empty upper-case names without '-': got {part!r}")
        if self.base.startswith(":") or self.base.endswith(":") or ":" in self.quote or ":" in (self.margin or ""):
            raise SymbolError(f"misplaced ':' in Atlas symbol parts {self.base!r}/{self.quote!r}")

    def __str__(self) -> str:
        text = f"{self.type}-{self.base}-{self.quote}"
        if self.margin is not None:
            text += f":{self.margin}"
        if self.expiry is not None:
            text += f"-{self.expiry:%Y%m%d}"
        return text

    @property
    def is_inverse(self) -> bool:
        """True for contracts margined (and settled) in the base asset, e.g. perpetual-BTC-USD:BTC."""
        return self.margin is not None and self.margin == self.base


def parse_symbol(text: str) -> AtlasSymbol:
    """Parse `<type>-<BASE>-<QUOTE>[:<MARGIN>][-<YYYYMMDD>]`; raise `SymbolError` saying what is expected."""
    if not isinstance(text, str):
        raise SymbolError(f"an Atlas symbol is a string, got {type(text).__name__}")
    match = _ATLAS_PATTERN.match(text)
    if match is None:
        raise SymbolError(
            f"malformed Atlas symbol {text!r}: expected <type>-<BASE>-<QUOTE>[:<MARGIN>][-<YYYYMMDD>] "
            f"with type in {', '.join(SYMBOL_TYPES)} ({_ATLAS_EXAMPLES})"
        )
    expiry_text = match["expiry"]
    expiry = None
    if expiry_text is not None:
        expiry = _parse_yyyymmdd(expiry_text, context=text)
    try:
        return AtlasSymbol(match["type"], match["base"], match["quote"], match["margin"], expiry)
    except SymbolError as exc:
        raise SymbolError(f"malformed Atlas symbol {text!r}: {exc}") from None


def is_atlas_symbol(text: str) -> bool:
    """True when `text` parses as an Atlas symbol (used to accept either Atlas or native ids)."""
    try:
        parse_symbol(text)
    except SymbolError:
        return False
    return True


def to_native(exchange: str, symbol: str | AtlasSymbol) -> str:
    """Atlas symbol → the exchange's native instrument id (e.g. binance-futures BTCUSDT)."""
    _check_exchange(exchange)
    parsed = symbol if isinstance(symbol, AtlasSymbol) else parse_symbol(symbol)
    if exchange == "binance-futures":
        return _binance_to_native(parsed)
    if exchange == "okx-perps":
        return _okx_to_native(parsed)
    return _hyperliquid_to_native(parsed)


def to_atlas(exchange: str, native: str) -> str:
    """The exchange's native instrument id → Atlas symbol text."""
    _check_exchange(exchange)
    if not isinstance(native, str) or not native or re.search(r"\s", native):
        raise _malformed(exchange, native)
    if exchange == "binance-futures":
        return str(_binance_to_atlas(native))
    if exchange == "okx-perps":
        return str(_okx_to_atlas(native))
    return str(_hyperliquid_to_atlas(native))


def resolve_symbol(exchange: str, symbol: str) -> tuple[str, str]:
    """Accept an Atlas symbol or a native id; return `(atlas_symbol, native_id)`, both checked."""
    _check_exchange(exchange)
    if is_atlas_symbol(symbol):
        native = to_native(exchange, symbol)
        return str(parse_symbol(symbol)), native
    atlas = to_atlas(exchange, symbol)
    return atlas, to_native(exchange, atlas)


# --- binance-futures -------------------------------------------------------------------------------------------


def _binance_to_native(symbol: AtlasSymbol) -> str:
    if symbol.type == "spot" or symbol.quote not in BINANCE_QUOTES or symbol.margin != symbol.quote:
        raise _unsupported("binance-futures", symbol)
    native = f"{symbol.base}{symbol.quote}"
    if symbol.type == "future":
        native += f"_{symbol.expiry:%y%m%d}"
    return native


def _binance_to_atlas(native: str) -> AtlasSymbol:
    if native != native.upper() or "-" in native or ":" in native:
        raise _malformed("binance-futures", native)
    pair, _, expiry_text = native.partition("_")
    # A base may itself end in a quote-like string (USDCUSDT is USDC quoted in USDT): only the last 4 characters
    # are ever the quote, so strip exactly one suffix.
    quote = next((q for q in BINANCE_QUOTES if pair.endswith(q)), None)
    base = pair[: -len(quote)] if quote else ""
    if quote is None or not base:
        raise _malformed("binance-futures", native)
    if not expiry_text:
        return AtlasSymbol("perpetual", base, quote, quote)
    if not re.fullmatch(r"\d{6}", expiry_text):
        raise _malformed("binance-futures", native)
    return AtlasSymbol("future", base, quote, quote, _parse_yyyymmdd("20" + expiry_text, context=native))


# --- okx-perps -------------------------------------------------------------------------------------------------


def _okx_to_native(symbol: AtlasSymbol) -> str:
    linear = symbol.quote in OKX_LINEAR_QUOTES and symbol.margin == symbol.quote
    inverse = symbol.quote == OKX_INVERSE_QUOTE and symbol.margin == symbol.base
    if symbol.type != "perpetual" or not (linear or inverse) or ":" in symbol.base:
        raise _unsupported("okx-perps", symbol)
    return f"{symbol.base}-{symbol.quote}-SWAP"


def _okx_to_atlas(native: str) -> AtlasSymbol:
    parts = native.split("-")
    if native != native.upper() or len(parts) != 3 or parts[2] != "SWAP" or not parts[0] or ":" in parts[0]:
        raise _malformed("okx-perps", native)
    base, quote = parts[0], parts[1]
    if quote in OKX_LINEAR_QUOTES:
        return AtlasSymbol("perpetual", base, quote, quote)
    if quote == OKX_INVERSE_QUOTE:
        return AtlasSymbol("perpetual", base, quote, base)
    raise _malformed("okx-perps", native)


# --- hyperliquid-perps -----------------------------------------------------------------------------------------


def _hyperliquid_to_native(symbol: AtlasSymbol) -> str:
    if symbol.type != "perpetual" or symbol.quote != HYPERLIQUID_QUOTE or symbol.margin != HYPERLIQUID_QUOTE:
        raise _unsupported("hyperliquid-perps", symbol)
    if ":" in symbol.base:
        # HIP-3 builder-deployed market: the dex name is lower case on Hyperliquid (xyz:AAPL).
        dex, _, asset = symbol.base.partition(":")
        if not dex or not asset or ":" in asset:
            raise _unsupported("hyperliquid-perps", symbol)
        return f"{dex.lower()}:{asset}"
    return _K_COIN_BY_ATLAS_BASE.get(symbol.base, symbol.base)


def _hyperliquid_to_atlas(native: str) -> AtlasSymbol:
    if native.startswith("@") or "/" in native or "-" in native:
        # `@107` and `PURR/USDC` are spot markets; this source reads perpetuals only.
        raise _malformed("hyperliquid-perps", native)
    if ":" in native:
        dex, _, asset = native.partition(":")
        if not dex or not asset or ":" in asset or dex != dex.lower() or asset != asset.upper():
            raise _malformed("hyperliquid-perps", native)
        base = f"{dex.upper()}:{asset}"
    elif native in HYPERLIQUID_K_COINS:
        base = native.upper()
    elif re.fullmatch(r"k[A-Z0-9]+", native):
        raise SymbolError(
            f"unknown Hyperliquid k-coin {native!r}: known are {', '.join(sorted(HYPERLIQUID_K_COINS))} "
            "(add it to HYPERLIQUID_K_COINS so the Atlas symbol maps back)"
        )
    elif native == native.upper():
        base = native
    else:
        raise _malformed("hyperliquid-perps", native)
    return AtlasSymbol("perpetual", base, HYPERLIQUID_QUOTE, HYPERLIQUID_QUOTE)


# --- helpers ---------------------------------------------------------------------------------------------------


def _check_exchange(exchange: str) -> None:
    exchange_of(exchange)


def _parse_yyyymmdd(text: str, *, context: str) -> date:
    if not re.fullmatch(r"\d{8}", text):
        raise SymbolError(f"malformed expiry {text!r} in {context!r}: expected YYYYMMDD ({_ATLAS_EXAMPLES})")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise SymbolError(f"expiry {text!r} in {context!r} is not a calendar date") from None


def _malformed(exchange: str, native: str) -> SymbolError:
    return SymbolError(f"unsupported {exchange} instrument id {native!r}: {_supported(exchange)}")


def _unsupported(exchange: str, symbol: AtlasSymbol) -> SymbolError:
    return SymbolError(f"{exchange} has no instrument for {str(symbol)!r}: {_supported(exchange)}")
