"""Search spaces, declared as data beside the configs they tune (ranker-tune samples them with Optuna).

A space maps a config field to a range: `Float(low, high, log)`, `Int(low, high)` or
`Choice(options)`. The families declare theirs beside their config dataclass (training/models/),
the settings every family shares in training/models/parts.py (BASE_SEARCH), the recipe in
training/config.py (TRAIN_SEARCH); per-task loss weights are added for the data set's tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # the families declare spaces without importing Optuna
    import optuna


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    options: tuple  # tuples (layer sizes) are offered as their text, "128,64", and read back


Param = Union[Float, Int, Choice]
Space = dict[str, Param]


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    """One value for `name` from the trial."""
    if isinstance(param, Float):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, Int):
        return trial.suggest_int(name, param.low, param.high)
    # Optuna's categorical values must be plain scalars: a tuple of sizes travels as "128,64".
    shown = {_text(o): o for o in param.options}
    return shown[trial.suggest_categorical(name, list(shown))]


def _text(option: Any) -> Any:
    return ",".join(map(str, option)) if isinstance(option, tuple) else option


def sample(trial: optuna.Trial, prefix: str, space: Space) -> dict[str, Any]:
    """Values for every field of `space`, named `prefix.field` in the study."""
    return {name: suggest(trial, f"{prefix}.{name}", param) for name, param in space.items()}
