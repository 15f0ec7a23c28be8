"""One resource's score from its multivariate detectors: the autoencoder and the seasonal residual.

A server-metrics bundle holds, per resource, a windowed autoencoder
(:mod:`otelai.detectors.multivariate`, after USAD, KDD 2020) and, in newer bundles, a seasonal
residual detector (:mod:`otelai.detectors.seasonal`, a robust seasonal naive baseline: Hyndman
& Athanasopoulos, *Forecasting: Principles and Practice*). Each score is divided by its own
threshold (a high quantile of the resource's held-out normal scores), so both read 1.0 at
"as unusual as 1 held-out row in 200", and the two are combined by their geometric mean:

    combined = sqrt(max(a / t_a, eps) * max(s / t_s, eps))

The geometric mean is a product of evidence (it rewards rows that both detectors find odd and
damps those only one finds mildly odd) that stays on the same scale as its parts; the
combination is then thresholded again at ``threshold``, the same quantile of the *combined*
held-out scores (inductive conformal calibration: Vovk, Gammerman & Shafer, 2005).

Until the seasonal detector has one full period of history for the resource, a row has no
seasonal score; it falls back to the autoencoder alone, mapped onto the combined scale as
``threshold * a / t_a``, so it is flagged exactly when the autoencoder's own calibrated
threshold says so. A bundle with no seasonal spec (older bundles) is the autoencoder alone,
unchanged.

:class:`ResourceScorer` is the one code path: ``otelai evaluate`` (the ASD / SMD tasks) and the
service (:mod:`otelai.scoring.resource_metrics`) both score rows through it, so the service
flags exactly the rows evaluation counts as alarms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.detectors.multivariate import ANY_RESOURCE, MultivariateAutoencoder
from otelai.detectors.multivariate import KIND as AE_KIND
from otelai.detectors.registry import Serving, detector_kinds, load_detector
from otelai.detectors.seasonal import KIND as SEASONAL_KIND
from otelai.detectors.seasonal import SeasonalResidual
from otelai.models.bundle import Bundle, BundleError, DetectorSpec

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

EPS = 1e-9  # a part at 0 must not zero the product: the other part still counts, damped


@dataclass(frozen=True, slots=True)
class Combination:
    """How the two parts make one score: each part's normaliser and the combined threshold."""

    ae_threshold: float
    seasonal_threshold: float
    threshold: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Combination:
        """From a seasonal spec's ``params`` (``ae_threshold``, ``score_threshold``, ``threshold``)."""
        combination = cls(
            ae_threshold=float(params["ae_threshold"]),
            seasonal_threshold=float(params["score_threshold"]),
            threshold=float(params["threshold"]),
        )
        if min(combination.ae_threshold, combination.seasonal_threshold, combination.threshold) <= 0:
            raise ValueError("thresholds must be positive")
        return combination


def geometric(ae: F64, seasonal: F64, ae_threshold: float, seasonal_threshold: float) -> F64:
    """Geometric mean of the two threshold-normalised scores."""
    a = np.maximum(ae / ae_threshold, EPS)
    s = np.maximum(seasonal / seasonal_threshold, EPS)
    out: F64 = np.sqrt(a * s)
    return out


def combined(ae: F64, seasonal: F64, ready: Bool, combination: Combination) -> F64:
    """Combined raw scores: the geometric mean where ``ready``, else the scaled autoencoder."""
    geo = geometric(ae, seasonal, combination.ae_threshold, combination.seasonal_threshold)
    alone = combination.threshold * ae / combination.ae_threshold
    out: F64 = np.where(ready, geo, alone)
    return out


@dataclass(frozen=True, slots=True)
class ResourceScore:
    """Scores of consecutive rows of one resource.

    ``raw`` is the combined score (flagged at ``raw >= threshold``); ``contribution`` the
    per-metric shares of the part that drives each row (whose normalised score is larger);
    ``ae`` / ``ae_threshold`` the autoencoder alone, for comparison; ``seasonal_leads`` which
    rows the seasonal part drives (None without one).
    """

    raw: F64
    contribution: F64
    threshold: float
    ae: F64
    ae_threshold: float
    seasonal_leads: npt.NDArray[np.bool_] | None = None  # per row: the seasonal part named the metrics


class ResourceScorer:
    """A resource's autoencoder and optional seasonal detector, scored as one.

    Parameters
    ----------
    autoencoder
        The resource's :class:`MultivariateAutoencoder` (its ``threshold`` is its normaliser).
    seasonal, combination
        The resource's seasonal detector and how to combine; both or neither.
    """

    def __init__(
        self,
        autoencoder: MultivariateAutoencoder,
        seasonal: SeasonalResidual | None = None,
        combination: Combination | None = None,
    ) -> None:
        if (seasonal is None) != (combination is None):
            raise ValueError("a seasonal detector needs its combination, and only it")
        self.autoencoder = autoencoder
        self.seasonal = seasonal
        self.combination = combination

    @property
    def threshold(self) -> float:
        """Raw score at which a row is anomalous."""
        if self.combination is None:
            return float(self.autoencoder.threshold)
        return self.combination.threshold

    def reset(self) -> None:
        self.autoencoder.reset()
        if self.seasonal is not None:
            self.seasonal.reset()

    def prime(self, context: npt.ArrayLike) -> None:
        """Advance both detectors over rows that came before, without scoring them."""
        rows = np.asarray(context, dtype=np.float64)
        if not len(rows):
            return
        if self.autoencoder.window > 1:
            self.autoencoder.errors_many(rows[-(self.autoencoder.window - 1) :].astype(np.float32))
        if self.seasonal is not None:
            self.seasonal.remember(rows)

    def score_many(self, rows: npt.ArrayLike) -> ResourceScore:
        """Score consecutive rows ``(n, n_features)``; advances both detectors."""
        values = np.asarray(rows, dtype=np.float64)
        ae_part = self.autoencoder.contributions_many(values.astype(np.float32)).astype(np.float64)
        ae = ae_part.sum(axis=1)
        ae_threshold = float(self.autoencoder.threshold)
        if self.seasonal is None or self.combination is None:
            return ResourceScore(ae, ae_part, ae_threshold, ae, ae_threshold)
        seasonal_part, ready = self.seasonal.contributions_ready_many(values)
        seasonal = seasonal_part.sum(axis=1)
        combination = self.combination
        raw = combined(ae, seasonal, ready, combination)
        # reasons: the metrics of whichever part is further past its own threshold
        seasonal_leads = ready & (seasonal / combination.seasonal_threshold > ae / combination.ae_threshold)
        contribution = np.where(seasonal_leads[:, None], seasonal_part, ae_part)
        return ResourceScore(raw, contribution, combination.threshold, ae, ae_threshold, seasonal_leads)

    def close(self) -> None:
        self.autoencoder.close()


@dataclass(frozen=True, slots=True)
class ResourceSpecs:
    """The specs that serve one resource: its autoencoder's and its seasonal one (if any)."""

    resource: str  # the calibration used: the resource's name, or ``*``
    autoencoder: DetectorSpec
    seasonal: DetectorSpec | None


def spec_tables(detectors: Iterable[DetectorSpec]) -> tuple[dict[str, DetectorSpec], dict[str, DetectorSpec]]:
    """(autoencoder specs, seasonal specs) of a bundle's detectors, by ``params.resource``."""
    ae: dict[str, DetectorSpec] = {}
    seasonal: dict[str, DetectorSpec] = {}
    for spec in detectors:
        table = ae if spec.kind == AE_KIND else seasonal if spec.kind == SEASONAL_KIND else None
        if table is not None:
            table[str(spec.params.get("resource", spec.name))] = spec
    return ae, seasonal


def pick_specs(
    ae: Mapping[str, DetectorSpec], seasonal: Mapping[str, DetectorSpec], resource: str
) -> ResourceSpecs | None:
    """The specs for ``resource``: its own calibration, else the pooled ``*``; None if neither.

    The seasonal spec is taken for the same calibration as the autoencoder's, since its
    combination is normalised by that autoencoder's threshold.
    """
    used = resource if resource in ae else ANY_RESOURCE
    spec = ae.get(used)
    if spec is None:
        return None
    return ResourceSpecs(used, spec, seasonal.get(used))


def seasonal_part(
    bundle: Bundle, spec: DetectorSpec, serving: Serving, kinds: Iterable[str] | None = None
) -> tuple[SeasonalResidual, Combination]:
    """The seasonal detector of ``spec`` and its combination.

    Through the plugin registry when the kind is installed (``kinds``: the installed kinds, if
    the caller already knows them), as any bundled detector; else built directly, so a checkout
    without the entry point installed still serves it.
    """
    installed = detector_kinds() if kinds is None else kinds
    detector = (
        load_detector(bundle, spec, serving)
        if spec.kind in installed
        else SeasonalResidual.from_spec(bundle, spec, serving)
    )
    if not isinstance(detector, SeasonalResidual):
        raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} is not a {SEASONAL_KIND} detector")
    try:
        return detector, Combination.from_params(spec.params)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"bundle {bundle.path}: detector {spec.name!r}: bad params: {exc}") from exc
