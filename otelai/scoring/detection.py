"""The built-in detectors of a signal, from the configuration: a streaming-baseline surprise
detector over the signal's per-key surprise columns, and the online PCA residual detector over
all columns (Shyu et al., ICDM 2003; see :mod:`otelai.detectors.pca`), served by the first
inference backend of ``scoring.backend`` that works here.
"""

from __future__ import annotations

from collections.abc import Sequence

from otelai.backends.select import FallbackCallback
from otelai.config import Scoring as ScoringConfig
from otelai.detectors.base import Detector
from otelai.detectors.pca import PcaDetector
from otelai.detectors.surprise import SurpriseDetector
from otelai.features.schema import FeatureSchema
from otelai.scoring.scorer import Scorer


def default_scorer(
    schema: FeatureSchema,
    surprise_columns: Sequence[str],
    scoring: ScoringConfig,
    *,
    on_fallback: FallbackCallback | None = None,
) -> Scorer:
    """A :class:`Scorer` over ``schema`` with the surprise detector and, if enabled, PCA.

    Parameters
    ----------
    schema
        Columns of the feature rows the scorer will see.
    surprise_columns
        Columns of ``schema`` that are already per-key surprises (z-scores, ``-ln p``).
    scoring
        ``scoring`` section of the configuration (``pca``, ``backend``, ``calibration``).
    on_fallback
        Called on each inference backend fallback (``otelai_backend_fallbacks_total``).
    """
    detectors: list[Detector] = [SurpriseDetector(schema, surprise_columns)]
    pca = scoring.pca
    if pca.enabled:
        detectors.append(
            PcaDetector(
                n_features=schema.width,
                variance=pca.variance,
                min_samples=pca.min_samples,
                reservoir_size=pca.reservoir_size,
                refit_every=pca.refit_every,
                backend_order=scoring.backend,
                backend_options=scoring.backend_options,
                on_fallback=on_fallback,
                seed=scoring.calibration.seed,
            )
        )
    return Scorer(schema, detectors, scoring.calibration)
