"""The combination of a resource's autoencoder and seasonal scores (otelai.scoring.combine)."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.detectors.multivariate import MultivariateAutoencoder
from otelai.detectors.seasonal import SeasonalResidual
from otelai.models.bundle import DetectorSpec
from otelai.scoring.combine import Combination, ResourceScorer, combined, geometric, pick_specs

COMBINATION = Combination(ae_threshold=2.0, seasonal_threshold=4.0, threshold=1.5)


class _Squares:
    """A stand-in backend: the per-metric error is the last row of the window, squared."""

    name = "squares"

    def __init__(self, width: int) -> None:
        self.width = width

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"error": inputs["x"][:, -self.width :] ** 2}

    def close(self) -> None:
        pass


def test_geometric_mean_of_the_normalised_parts() -> None:
    got = geometric(np.array([2.0, 8.0, 0.0]), np.array([4.0, 1.0, 4.0]), 2.0, 4.0)
    np.testing.assert_allclose(got, [1.0, 1.0, np.sqrt(1e-9)])


def test_rows_without_a_seasonal_score_are_flagged_at_the_autoencoders_own_threshold() -> None:
    ae = np.array([1.9, 2.0, 2.1, 10.0])
    raw = combined(ae, np.full(4, 1e6), np.zeros(4, dtype=bool), COMBINATION)
    np.testing.assert_array_equal(raw >= COMBINATION.threshold, ae >= COMBINATION.ae_threshold)
    ready = combined(ae, np.full(4, 4.0), np.ones(4, dtype=bool), COMBINATION)
    np.testing.assert_allclose(ready, np.sqrt(ae / 2.0))


def test_combination_params_are_checked() -> None:
    params = {"ae_threshold": 2.0, "score_threshold": 4.0, "threshold": 1.5}
    assert Combination.from_params(params) == COMBINATION
    with pytest.raises(ValueError):
        Combination.from_params({**params, "threshold": 0.0})


def _autoencoder(threshold: float = 3.0) -> MultivariateAutoencoder:
    return MultivariateAutoencoder(
        backend=_Squares(2),  # type: ignore[arg-type]
        window=2,
        n_features=2,
        weights=[1.0, 0.5],
        threshold=threshold,
    )


def test_without_a_seasonal_part_the_score_is_the_autoencoders() -> None:
    rows = np.random.default_rng(0).normal(size=(12, 2))
    scorer = ResourceScorer(_autoencoder())
    scored = scorer.score_many(rows)
    want = _autoencoder().contributions_many(rows.astype(np.float32))
    np.testing.assert_allclose(scored.contribution, want, rtol=1e-6)
    np.testing.assert_array_equal(scored.raw, scored.ae)
    assert scored.threshold == scorer.threshold == 3.0


def test_the_leading_part_names_the_metrics() -> None:
    period = 4
    seasonal = SeasonalResidual(n_features=2, period=period, days=2, sigma=[1.0, 0.1])
    scorer = ResourceScorer(_autoencoder(), seasonal, COMBINATION)
    scorer.prime(np.zeros((2 * period, 2)))
    # metric 1 at 1.0: an error of 0.5 for the autoencoder (a quarter of its threshold), but
    # 10 sigma off its day: z**2 / width = 50, 12.5 times the seasonal threshold
    scored = scorer.score_many(np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(scored.contribution[0], [0.0, 50.0])
    assert scored.ae[0] == pytest.approx(0.5)
    assert scored.raw[0] == pytest.approx(np.sqrt(0.25 * 12.5))
    assert scored.threshold == COMBINATION.threshold
    with pytest.raises(ValueError):
        ResourceScorer(_autoencoder(), seasonal, None)


def test_specs_are_picked_by_resource_with_the_pooled_fallback() -> None:
    ae = {r: DetectorSpec(name=r, kind="multivariate_ae") for r in ("a", "*")}
    seasonal = {"*": DetectorSpec(name="*/s", kind="seasonal_residual")}
    own, pooled = pick_specs(ae, seasonal, "a"), pick_specs(ae, seasonal, "zz")
    assert own is not None and (own.resource, own.seasonal) == ("a", None)
    assert pooled is not None and pooled.resource == "*" and pooled.seasonal is seasonal["*"]
    assert pick_specs({}, seasonal, "a") is None
