import torch

import sobolev_kernels as sk


def test_sampled_directions_are_unit_and_reproducible():
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = sk.sample_directions(100, 4, 5, generator=g1)
    b = sk.sample_directions(100, 4, 5, generator=g2)
    assert a.shape == (100, 4, 5) and a.dtype == torch.float32
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(100, 4))


def test_sampled_directions_are_uniform_on_the_sphere():
    # Uniform on the sphere: E[v] = 0 and E[v v^T] = I / d.
    v = sk.sample_directions(20000, 1, 3, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)[:, 0]  # fmt: skip
    assert v.mean(0).abs().max() < 0.02
    cov = v.T @ v / v.shape[0]
    assert (cov - torch.eye(3, dtype=torch.float64) / 3).abs().max() < 0.02


def test_one_dimensional_directions_are_signs():
    v = sk.sample_directions(50, 2, 1, generator=torch.Generator().manual_seed(1))
    assert set(v.flatten().tolist()) <= {-1.0, 1.0}


def test_low_precision_sampling():
    v = sk.sample_directions(10, 2, 8, dtype=torch.bfloat16, generator=torch.Generator())
    assert v.dtype == torch.bfloat16
    assert (v.float().norm(dim=-1) - 1).abs().max() < 1e-2


def test_full_directions_are_the_basis():
    assert torch.equal(
        sk.full_directions(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    )


def test_same_directions_at_every_dtype():
    a = sk.sample_directions(5, 2, 3, generator=torch.Generator().manual_seed(9))
    b = sk.sample_directions(5, 2, 3, generator=torch.Generator().manual_seed(9),
                             dtype=torch.float64)  # fmt: skip
    assert torch.equal(a, b.float())
