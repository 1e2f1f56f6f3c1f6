"""Module-level targets for the config tests (importable by path, also in a subprocess)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Act(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Pair(NamedTuple):
    left: Any
    right: Any


class Model:
    calls = 0

    def __init__(self, hidden: int = 128, act: str = "relu", layers: Any = ()) -> None:
        Model.calls += 1
        self.hidden = hidden
        self.act = act
        self.layers = layers

    @classmethod
    def make(cls, **kwargs: Any) -> Model:
        return cls(**kwargs)

    class Inner:
        @staticmethod
        def double(x: int) -> int:
            return 2 * x


class Encoder:
    def __init__(self, size: int, depth: int = 2) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.depth = depth


def train(model: Any, epochs: int = 1, lr: float = 0.1, *, batch_size: int = 32,
          tags: Any = None) -> dict[str, Any]:
    return {"model": model, "epochs": epochs, "lr": lr, "batch_size": batch_size, "tags": tags}


def positional(a: Any, /, b: Any, *rest: Any, c: int = 1, **extra: Any) -> tuple[Any, ...]:
    return (a, b, rest, c, extra)


def posonly(a: Any, b: Any = 2, /) -> tuple[Any, Any]:
    return (a, b)


def anything(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def identity(value: Any) -> Any:
    return value


def add(x: int, y: int = 1) -> int:
    return x + y


def make_closure() -> Any:
    def inner(x: int) -> int:
        return x

    return inner


alias_of_add = add  # same object under another name: its import path is still "add"


def sample_config() -> Any:
    """A config with a bit of everything, for fingerprint tests (also in a subprocess)."""
    import steadyrun as run

    return run.Partial(train, model=run.Config(Model, hidden=64, act=Act.GELU, layers=(1, 2.5)),
                       tags={"b": [1, None, True], "a": b"\x00", 3: float("inf")})
