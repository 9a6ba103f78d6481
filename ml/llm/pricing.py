"""Token cost accounting from a price table: per model, USD per 1M input and output tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ml.llm.errors import ConfigError
from ml.llm.types import Usage


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input_per_1m + usage.completion_tokens * self.output_per_1m) / 1e6


class PriceTable:
    """``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}, ...}`` (USD per 1M tokens).

    Keys are model ids, or ``"<provider name>/<model>"`` to price the same model differently on
    two providers (the qualified key wins). A model absent from the table has no price:
    :meth:`cost` returns None and the router counts the call as unpriced.
    """

    def __init__(self, prices: Mapping[str, Any] | None = None) -> None:
        self._prices: dict[str, Price] = {}
        for model, spec in (prices or {}).items():
            self._prices[model] = self._parse(model, spec)

    @staticmethod
    def _parse(model: str, spec: Any) -> Price:
        if isinstance(spec, Price):
            return spec
        if isinstance(spec, (list, tuple)) and len(spec) == 2:
            inp, out = spec
        elif isinstance(spec, Mapping) and {"input", "output"} <= set(spec):
            inp, out = spec["input"], spec["output"]
        else:
            raise ConfigError(
                f"prices[{model!r}] must be {{'input': usd_per_1m, 'output': usd_per_1m}}, got {spec!r}"
            )
        try:
            price = Price(float(inp), float(out))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"prices[{model!r}] has a non-numeric price: {spec!r}") from exc
        if price.input_per_1m < 0 or price.output_per_1m < 0:
            raise ConfigError(f"prices[{model!r}] must not be negative: {spec!r}")
        return price

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({sorted(self._prices)})"

    def price_for(self, provider: str, model: str) -> Price | None:
        return self._prices.get(f"{provider}/{model}") or self._prices.get(model)

    def cost(self, provider: str, model: str, usage: Usage, default: Price | None = None) -> float | None:
        price = self.price_for(provider, model) or default
        return None if price is None else price.cost(usage)
