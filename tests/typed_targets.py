"""Module-level targets with type hints, for the typed-override tests (also in a subprocess)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal, Optional


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class MLP:
    def __init__(self, hidden: int = 4, act: Literal["relu", "gelu"] = "relu",
                 dropout: float = 0.0) -> None:
        self.hidden = hidden
        self.act = act
        self.dropout = dropout


def train(lr: float = 0.1, epochs: int = 1, flag: bool = False, name: str = "run",
          out: Path | None = None, seed: Optional[int] = None,  # noqa: UP045 - both spellings
          mode: Literal["fast", "slow"] = "fast", color: Color = Color.RED,
          layers: list[int] | None = None, shape: tuple[int, ...] = (),
          pair: tuple[int, str] = (0, ""), weights: dict[str, float] | None = None,
          model: MLP | None = None, loose=None, anything: Any = None) -> dict[str, Any]:
    """Returns what it got, with the model described by its fields."""
    got = dict(locals())
    if isinstance(model, MLP):
        got["model"] = {"hidden": model.hidden, "act": model.act, "dropout": model.dropout}
    if isinstance(out, Path):
        got["out"] = str(out)
    if isinstance(color, Color):
        got["color"] = color.name
    return got
