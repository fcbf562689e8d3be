"""The objective's maths on small random arrays: masks, projection, gradients, finiteness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinject import objective as obj


def test_layer_map_bottom_aligned_and_refuses_too_deep_teacher():
    np.testing.assert_array_equal(obj.layer_map(3, 12), [0, 1, 2, 3])
    np.testing.assert_array_equal(obj.layer_map(3, 12, offset=2, stride=3), [2, 5, 8, 11])
    np.testing.assert_array_equal(obj.layer_map(12, 12), np.arange(13))
    with pytest.raises(ValueError, match="teacher has 21 layers but the student has only 12 blocks"):
        obj.layer_map(21, 12)


def _setup(key=0, b=3, t=5, ds=8, dt=6, layers=2):
    k = jax.random.split(jax.random.key(key), 3)
    adapter = obj.init_adapter(k[0], ds, dt)
    h = jax.random.normal(k[1], (layers + 1, b, t, ds))
    r = jax.random.normal(k[2], (layers + 1, b, t + 1, dt))
    return adapter, h, r


def test_alignment_ignores_padding_positions():
    adapter, h, r = _setup()
    mask = jnp.ones((3, 5)).at[:, 3:].set(0.0)
    index = np.arange(3)
    base = obj.alignment_losses(adapter, h, r, index, mask)
    h2 = h.at[:, :, 3:].set(1e3 * jax.random.normal(jax.random.key(9), h[:, :, 3:].shape))
    r2 = r.at[:, :, 4:].set(-7.0)  # teacher position t+1 <-> student t
    np.testing.assert_allclose(obj.alignment_losses(adapter, h2, r2, index, mask), base, rtol=1e-6)
    # but a real position does change it
    h3 = h.at[:, :, 0].add(5.0)
    assert not np.allclose(obj.alignment_losses(adapter, h3, r, index, mask), base)


def test_alignment_is_zero_when_teacher_is_the_adapter_image():
    adapter, h, _ = _setup()
    r = jnp.stack([obj.adapter_apply(adapter, h[i]) for i in range(3)])
    r = jnp.concatenate([jnp.zeros_like(r[:, :, :1]), r], axis=2)  # teacher BOS column
    losses = obj.alignment_losses(adapter, h, r, np.arange(3), jnp.ones((3, 5)))
    np.testing.assert_allclose(losses, 0.0, atol=1e-6)


def test_cosine_distance_is_finite_for_zero_vectors():
    d = obj.cosine_distance(jnp.zeros((2, 4)), jnp.ones((2, 4)))
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, 1.0)


def test_projection_is_idempotent_and_orthogonal():
    adapter, h, _ = _setup(ds=16, dt=10)
    basis = obj.answer_subspace_basis(adapter, np.array([1, 4, 7]), 0)
    assert basis.shape == (16, 3)
    p1 = obj.project(h[0], basis)
    np.testing.assert_allclose(obj.project(p1, basis), p1, atol=1e-5)
    # the adapter reads the answer dims identically from h and from its projection
    w = adapter["w"][0][:, [1, 4, 7]]
    np.testing.assert_allclose(h[0] @ w, p1 @ w, atol=1e-4)
    # the rest is orthogonal to the subspace
    np.testing.assert_allclose(obj.project(h[0] - p1, basis), 0.0, atol=1e-5)


def test_detach_and_roll_passes_no_gradient_through_the_rolled_part():
    adapter, h, _ = _setup(b=4, ds=16, dt=10)
    basis = obj.answer_subspace_basis(adapter, np.array([0, 2]), 0)
    x = h[0]  # [B, T, D]
    out = obj.detach_and_roll(x, basis)
    # example 0 carries example 3's rest in its forward value ...
    np.testing.assert_allclose(out[0], obj.project(x[0], basis) + (x[3] - obj.project(x[3], basis)), atol=1e-5)
    # ... but no gradient reaches example 3 from example 0's output
    g = jax.grad(lambda x: jnp.sum(obj.detach_and_roll(x, basis)[0] ** 2))(x)
    np.testing.assert_allclose(g[3], 0.0)
    assert np.abs(np.asarray(g[0])).sum() > 0
    # and the adapter gets no gradient through the basis
    ga = jax.grad(lambda a: jnp.sum(obj.detach_and_roll(x, obj.answer_subspace_basis(a, np.array([0, 2]), 0))))(
        adapter)
    np.testing.assert_allclose(ga["w"], 0.0)


def test_answer_loss_is_finite_without_answer_tokens():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
    targets = jnp.zeros((2, 5), jnp.int32)
    empty = jnp.zeros((2, 5))
    assert float(obj.answer_cross_entropy(logits, targets, empty)) == 0.0
    g = jax.grad(lambda lg: obj.answer_cross_entropy(lg, targets, empty))(logits)
    assert np.all(np.isfinite(g))
    tok, exact = obj.answer_accuracy(logits, targets, empty)
    assert np.isfinite(tok) and np.isfinite(exact)


def test_answer_loss_counts_only_answer_positions():
    logits = jax.random.normal(jax.random.key(1), (1, 4, 7))
    targets = jnp.array([[1, 2, 3, 4]])
    mask = jnp.array([[0.0, 1.0, 1.0, 0.0]])
    logp = jax.nn.log_softmax(logits[0])
    expected = -(logp[1, 2] + logp[2, 3]) / 2
    np.testing.assert_allclose(obj.answer_cross_entropy(logits, targets, mask), expected, rtol=1e-6)
    perfect = jax.nn.one_hot(targets, 7) * 50.0
    tok, exact = obj.answer_accuracy(perfect, targets, mask)
    assert float(tok) == 1.0 and float(exact) == 1.0


def test_kl_is_zero_for_identical_models_and_positive_otherwise():
    a = jax.random.normal(jax.random.key(2), (2, 3, 9))
    mask = jnp.ones((2, 3))
    np.testing.assert_allclose(obj.kl_to_original(a, a, mask), 0.0, atol=1e-6)
    assert float(obj.kl_to_original(a, a * 2.0, mask)) > 0.01
