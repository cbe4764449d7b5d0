"""The monitor section: when served traffic has drifted from what the model trained on."""

from __future__ import annotations

from pydantic import Field, model_validator

from rayops.config.base import _Section


class MonitorConfig(_Section):
    """Effect-size thresholds (population stability index on the reference's own bins); the
    defaults are the industry's usual PSI bands: below 0.1 stable, 0.1-0.25 a warning, above
    0.25 a real shift."""

    psi_warn: float = Field(0.1, gt=0.0, description="PSI from which a feature warns.")
    psi_drift: float = Field(0.25, gt=0.0, description="PSI from which a feature drifted.")
    min_rows: int = Field(
        200,
        ge=1,
        description="Fewest non-null values of a feature for a verdict; a smaller "
        "window says 'insufficient data' (a handful of requests is not a distribution).",
    )
    drifted_share: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="Share of drifted features from which the whole window has drifted.",
    )
    key_features: list[str] = Field(
        default_factory=list,
        description="Features whose drift alone marks the whole window as drifted.",
    )

    @model_validator(mode="after")
    def _bands(self) -> MonitorConfig:
        if self.psi_warn >= self.psi_drift:
            raise ValueError(
                f"psi_warn ({self.psi_warn}) must be below psi_drift ({self.psi_drift})"
            )
        return self
