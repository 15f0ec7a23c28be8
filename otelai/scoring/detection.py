"""The detectors of a signal: a streaming-baseline surprise detector over the signal's per-key
surprise columns, plus either the trained detectors of the model bundle (when it has this
signal, each calibrated from the bundle's quantiles so scoring is meaningful from the first
batch) or, without one, the online PCA residual detector over all columns (Shyu et al., ICDM
2003; see :mod:`otelai.detectors.pca`). Every graph is served by the first inference backend
of ``scoring.backend`` that works here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from otelai.backends.select import FallbackCallback
from otelai.config import Scoring as ScoringConfig
from otelai.detectors.base import Detector
from otelai.detectors.pca import PcaDetector
from otelai.detectors.surprise import SurpriseDetector
from otelai.features.schema import FeatureSchema
from otelai.scoring.scorer import Scorer

if TYPE_CHECKING:
    from otelai.models.bundle import Bundle, SignalName


def default_scorer(
    schema: FeatureSchema,
    surprise_columns: Sequence[str],
    scoring: ScoringConfig,
    *,
    on_fallback: FallbackCallback | None = None,
    bundle: Bundle | None = None,
    signal: SignalName | None = None,
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
    bundle, signal
        The model bundle and the signal whose trained detectors to use (checked against
        ``schema`` at load time, :func:`otelai.models.serving.load_configured_bundle`).
    """
    detectors: list[Detector] = [SurpriseDetector(schema, surprise_columns)]
    model = bundle.signal(signal) if bundle is not None and signal is not None else None
    if bundle is not None and model is not None and model.detectors:
        from otelai.detectors.registry import Serving, load_detector

        serving = Serving(scoring.backend, scoring.backend_options, on_fallback)
        trained = [load_detector(bundle, spec, serving) for spec in model.detectors]
        scorer = Scorer(schema, [*detectors, *trained], scoring.calibration)
        for index, spec in enumerate(model.detectors, start=len(detectors)):
            scorer.prime(index, spec.calibration.quantiles)
        return scorer
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
