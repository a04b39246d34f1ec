"""Acceptance sampling against Leviathan's truncated geometric law."""
import numpy as np
import pytest
from scipy import stats

from simulator.physics.acceptance import (expected_tokens_per_position, expected_tokens_per_round,
                                  leviathan_speedup, request_alphas, sample_accepted,
                                  sample_accepted_per_position)


@pytest.mark.parametrize("alpha,gamma", [(0.3, 3), (0.7, 5), (0.9, 8)])
def test_sampled_counts_follow_truncated_geometric(alpha, gamma):
    rng = np.random.default_rng(0)
    k = sample_accepted(rng, np.full(200_000, alpha), gamma)
    observed = np.bincount(k, minlength=gamma + 1)
    p = np.array([alpha**i * (1 - alpha) for i in range(gamma)] + [alpha**gamma])
    chi2 = stats.chisquare(observed, p * k.size)
    assert chi2.pvalue > 1e-3
    assert abs((k + 1).mean() - expected_tokens_per_round(alpha, gamma)) < 0.01


def test_edge_alphas():
    rng = np.random.default_rng(1)
    assert (sample_accepted(rng, np.ones(100), 4) == 4).all()
    assert (sample_accepted(rng, np.full(100, 1e-12), 4) == 0).all()
    assert expected_tokens_per_round(1.0, 4) == 5.0


def test_expected_tokens_closed_form():
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_position(np.array([0.5, 0.5])) == pytest.approx(1.75)
    # Leviathan et al. Table/eq. 1: alpha .8, gamma 5, c .05 -> ~2.95x... computed directly:
    e = (1 - 0.8**6) / 0.2
    assert leviathan_speedup(0.8, 5, 0.05) == pytest.approx(e / 1.25)


def test_per_position_sampling_matches_its_expectation():
    a = np.array([0.9, 0.8, 0.6, 0.5])
    k = sample_accepted_per_position(np.random.default_rng(2), a, 200_000)
    assert abs((k + 1).mean() - expected_tokens_per_position(a)) < 0.01
    # P(K >= 2) = a1 * a2
    assert abs((k >= 2).mean() - 0.72) < 0.005


def test_request_alphas_beta_mean_and_spread():
    x = request_alphas(np.random.default_rng(3), 0.7, 20.0, 100_000)
    assert abs(x.mean() - 0.7) < 0.005
    assert abs(x.var() - 0.7 * 0.3 / 21) < 0.001
    assert (request_alphas(np.random.default_rng(3), 0.7, None, 5) == 0.7).all()


def test_cdf_sampler_matches_log_sampler_distribution():
    from simulator.physics.acceptance import sample_accepted_same_alpha, truncated_geometric_cdf
    rng = np.random.default_rng(5)
    a = np.bincount(sample_accepted_same_alpha(rng, truncated_geometric_cdf(0.6, 5), 200_000), minlength=6)
    b = np.bincount(sample_accepted(rng, np.full(200_000, 0.6), 5), minlength=6)
    assert stats.chi2_contingency(np.vstack([a, b])).pvalue > 1e-3
