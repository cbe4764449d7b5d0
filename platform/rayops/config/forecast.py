"""The ``data.forecast`` section: what a forecasting task's series look like.

Steps and durations are written as a number and a unit: ``15min``, ``1h``, ``1d``, ``1w``
(``m`` alone is refused: minutes or months?).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from rayops.config.base import _Section

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(min|h|d|w)\s*$")
_UNIT_S = {"min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DAY_S, WEEK_S = 86400, 7 * 86400


def duration_seconds(text: str) -> int:
    """``"1h"`` -> 3600; a ValueError names what is allowed."""
    match = _DURATION_RE.match(str(text))
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not a duration: use a positive number and a unit, "
            "min, h, d or w (15min, 1h, 1d, 8w)"
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class ForecastConfig(_Section):
    timestamp: str = Field(
        description="The timestamp column (declared datetime, "
        "nullable: false): when each observation was made."
    )
    series: list[str] = Field(
        default_factory=list,
        description="Columns that identify a series (e.g. [zone]); none: the data is one "
        "series. Declared categorical, text or integer, nullable: false.",
    )
    frequency: str = Field(
        "1h", description="The series' step (15min, 1h, 1d, 1w); every timestamp must fall on it."
    )
    horizon: int = Field(
        24, ge=1, le=10_000, description="Steps forecast from each origin (24 at 1h: a day)."
    )
    season: int | None = Field(
        None,
        ge=2,
        description="The seasonal-naive lag in steps; default from the frequency: a week "
        "(168 at 1h, 7 at 1d), 52 at 1w.",
    )
    known_in_advance: list[str] = Field(
        default_factory=list,
        description="Covariates known for future steps (a forecast temperature, a holiday): "
        "the model reads them at the step it forecasts, a request sends them in 'future'. "
        "Calendar features of the step are added automatically.",
    )
    validation: str = Field(
        "8w",
        description="The last part of the data held out for validation (8w: eight "
        "weeks). It is forecast from origins every `horizon` steps, each seeing only the "
        "data up to its origin.",
    )
    lags: int = Field(
        6,
        ge=1,
        le=1000,
        description="How many of the latest values at the origin the model "
        "reads (besides the same step a day and a season earlier and the "
        "means over a day and a season).",
    )
    origin_every: int = Field(
        1,
        ge=1,
        description="Training examples start at every n-th step (1: every step). "
        "Each origin gives `horizon` examples; a larger value trains on fewer, for long "
        "histories. Validation origins are always every `horizon` steps.",
    )

    @field_validator("frequency", "validation")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _fits_the_step(self) -> ForecastConfig:
        step, held = self.step_s, duration_seconds(self.validation)
        if held % step:
            raise ValueError(
                f"validation {self.validation!r} is not a whole number of {self.frequency!r} steps"
            )
        if held // step < self.horizon:
            raise ValueError(
                f"validation {self.validation!r} holds {held // step} step(s), "
                f"fewer than one horizon ({self.horizon}); hold out at least "
                "one horizon"
            )
        if self.default_season is None and self.season is None:
            raise ValueError(
                f"no default season for frequency {self.frequency!r}: set "
                "data.forecast.season (the seasonal-naive lag in steps)"
            )
        return self

    @property
    def step_s(self) -> int:
        return duration_seconds(self.frequency)

    @property
    def default_season(self) -> int | None:
        """A week of steps below a week (168 at 1h, 7 at 1d), 52 at a week."""
        step = self.step_s
        if step < WEEK_S and WEEK_S % step == 0:
            return WEEK_S // step
        return 52 if step == WEEK_S else None

    @property
    def season_steps(self) -> int:
        return self.season or self.default_season  # type: ignore[return-value]

    @property
    def periods(self) -> tuple[int, ...]:
        """The cycles the features follow, in steps: the season, and a day when a day
        holds several steps."""
        found = {self.season_steps}
        step = self.step_s
        if step < DAY_S and DAY_S % step == 0:
            found.add(DAY_S // step)
        return tuple(sorted(found))

    @property
    def validation_steps(self) -> int:
        return duration_seconds(self.validation) // self.step_s

    @property
    def lookback(self) -> int:
        """Steps of history a forecast needs up to its origin (the origin included)."""
        return max(*self.periods, self.lags)
