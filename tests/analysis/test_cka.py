"""CKA: properties (identity, orthogonal / isotropic-scale invariance), agreement with a direct float64 formula,
the unbiased HSIC estimator, and the streaming minibatch accumulator."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spin_kernels.analysis import MinibatchCKA, hsic_unbiased, linear_cka


def direct_cka(X, Y):
    """Textbook float64 CKA: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with centred Grams, numpy only."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def direct_hsic_unbiased(K, L):
    """Song et al. (2012) eq. 5 written out with explicit loops over the definition's terms."""
    K = np.array(K, dtype=np.float64)
    L = np.array(L, dtype=np.float64)
    n = len(K)
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def random_orthogonal(p, gen):
    q, r = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


shapes = st.tuples(st.integers(6, 40), st.integers(1, 24), st.integers(1, 24))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2 ** 31 - 1))
def test_cka_self_is_one_and_matches_direct_formula(shape, seed):
    n, p, q = shape
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    Y = torch.randn(n, q, generator=g) + 0.5 * X[:, :1]
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, Y) == pytest.approx(direct_cka(X.numpy(), Y.numpy()), rel=1e-9, abs=1e-12)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), rel=1e-12)
    assert -1e-12 <= linear_cka(X, Y) <= 1 + 1e-12


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2 ** 31 - 1), scale=st.floats(1e-3, 1e3))
def test_cka_invariances(shape, seed, scale):
    n, p, q = shape
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    Y = torch.randn(n, q, generator=g, dtype=torch.float64) + X.sum(1, keepdim=True)
    base = linear_cka(X, Y)
    Q = random_orthogonal(p, g)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-8, abs=1e-10)         # orthogonal transform
    assert linear_cka(scale * X, Y) == pytest.approx(base, rel=1e-8, abs=1e-10)     # isotropic scaling
    assert linear_cka(X + 3.0, Y) == pytest.approx(base, rel=1e-8, abs=1e-10)       # mean shift (centering)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(
        linear_cka(X @ Q * scale + 3.0, Y, debiased=True), rel=1e-7, abs=1e-9)


def test_gram_and_feature_paths_agree():
    # n < p uses n×n Grams, n > p uses p×q cross-covariances: both must give the same number.
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(10, 50, generator=g), torch.randn(10, 3, generator=g)
    assert linear_cka(X, Y) == pytest.approx(direct_cka(X.numpy(), Y.numpy()), rel=1e-10)
    X, Y = torch.randn(200, 5, generator=g), torch.randn(200, 7, generator=g)
    assert linear_cka(X, Y) == pytest.approx(direct_cka(X.numpy(), Y.numpy()), rel=1e-10)
    # higher-rank features are flattened per example
    Z = torch.randn(12, 2, 3, 4, generator=g)
    assert linear_cka(Z, Z.reshape(12, -1)) == pytest.approx(1.0)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(4, 25), seed=st.integers(0, 2 ** 31 - 1))
def test_hsic_unbiased_matches_definition(n, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, 5)), rng.standard_normal((n, 3))
    K, L = X @ X.T, Y @ Y.T
    got = float(hsic_unbiased(torch.from_numpy(K), torch.from_numpy(L)))
    assert got == pytest.approx(direct_hsic_unbiased(K, L), rel=1e-9, abs=1e-12)


def test_hsic_unbiased_is_unbiased_for_independent_features():
    # Independent X, Y: E[HSIC_1] = 0; the mean over many draws is close to 0 while the biased HSIC is not.
    rng = np.random.default_rng(1)
    vals, biased = [], []
    for _ in range(300):
        X, Y = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
        K, L = torch.from_numpy(X @ X.T), torch.from_numpy(Y @ Y.T)
        vals.append(float(hsic_unbiased(K, L)))
        H = torch.eye(8, dtype=torch.float64) - 1 / 8
        biased.append(float(((H @ K @ H) * L).sum() / 49))
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals)) < 4 * se
    assert np.mean(biased) > 4 * np.std(biased) / np.sqrt(len(biased))


def test_minibatch_cka_single_batch_equals_debiased_and_converges():
    g = torch.Generator().manual_seed(3)
    n = 512
    X = torch.randn(n, 6, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 4, generator=g,
                                                                                     dtype=torch.float64)
    acc = MinibatchCKA(2)
    acc.update([X[:64], Y[:64]])
    assert acc.compute()[0, 1] == pytest.approx(linear_cka(X[:64], Y[:64], debiased=True), rel=1e-10)
    acc = MinibatchCKA(2)
    for i in range(0, n, 32):
        acc.update([X[i:i + 32], Y[i:i + 32]])
    M = acc.compute()
    np.testing.assert_allclose(np.diag(M), 1.0, rtol=1e-12)
    np.testing.assert_allclose(M, M.T, rtol=1e-12)
    # the sum of unbiased per-batch HSICs tracks the full-data CKA
    assert M[0, 1] == pytest.approx(linear_cka(X, Y), abs=0.03)


def test_minibatch_cka_skips_tiny_batches_and_validates():
    acc = MinibatchCKA(1)
    acc.update([torch.randn(3, 2)])
    assert acc.skipped == 1
    with pytest.raises(ValueError, match="no batch"):
        acc.compute()
    with pytest.raises(ValueError, match="feats_x"):
        acc.update([torch.randn(8, 2), torch.randn(8, 2)])
    with pytest.raises(ValueError, match="num_layers"):
        MinibatchCKA(0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="Y"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="X"):
        linear_cka(torch.randn(5), torch.randn(5, 2))
    with pytest.raises(TypeError, match="X"):
        linear_cka([[1.0]], torch.randn(1, 1))
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(torch.ones(5, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="4 examples"):
        hsic_unbiased(torch.eye(3), torch.eye(3))


def test_hsic_unbiased_is_invariant_to_feature_mean_and_stable_for_large_means():
    # The reason gram_linear centres: same HSIC, without cancelling ‖μ‖⁴-sized terms.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(16, 3, generator=g, dtype=torch.float64) + X[:, :3]
    c = 3 * torch.randn(5, generator=g, dtype=torch.float64)
    Xs = X + c
    L = Y @ Y.T
    assert float(hsic_unbiased(Xs @ Xs.T, L)) == pytest.approx(float(hsic_unbiased(X @ X.T, L)), rel=1e-10)
    # features with a mean 1e4× their spread: minibatch CKA of a layer with itself stays exactly 1, and of two
    # related layers stays within [0, 1]
    big = 1e4 * torch.randn(1, 50, generator=g, dtype=torch.float64)
    A = big + torch.randn(64, 50, generator=g, dtype=torch.float64)
    B = big + A[:, :50] * 0.5 + torch.randn(64, 50, generator=g, dtype=torch.float64)
    acc = MinibatchCKA(2)
    for i in range(0, 64, 16):
        acc.update([A[i:i + 16], B[i:i + 16]])
    M = acc.compute()
    assert M[0, 0] == pytest.approx(1.0) and 0.0 <= M[0, 1] <= 1.0
