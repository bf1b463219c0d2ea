"""Latent tools (callbacks.LatentTools): interpolation grids, the 2-D manifold over the
prior's quantiles, and the class-coloured scatter of test codes."""

from __future__ import annotations

import torch

from genlab.callbacks import LatentTools
from genlab.callbacks.views import interpolation_grid, prior_quantiles, scatter_image
from genlab.models import AE, CVAE, VAE


def test_prior_quantiles_invert_each_prior() -> None:
    u = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99])
    normal = torch.distributions.Normal(0.0, 1.0)
    vae = VAE((1, 8, 8), latent_dim=2, net={"hidden_sizes": [8]})
    assert torch.allclose(prior_quantiles(vae, u), normal.icdf(u)[:, None].expand(-1, 2))
    cvae = CVAE((1, 8, 8), num_classes=3, latent_dim=2, net={"hidden_sizes": [8]})
    q = prior_quantiles(cvae, u)  # (5, 2) quantiles of the class-mixture marginal
    cdf = normal.cdf(q[:, None, :] - cvae.class_means.detach()).mean(1)
    assert torch.allclose(cdf, u[:, None].expand(-1, 2), atol=1e-5)
    with torch.no_grad():
        cvae.class_means.zero_()  # one component: the standard normal again
    assert torch.allclose(prior_quantiles(cvae, u), normal.icdf(u)[:, None], atol=1e-5)
    ae = AE((1, 8, 8), latent_dim=2, net={"hidden_sizes": [8]})
    ae.code_mean.copy_(torch.tensor([1.0, -2.0]))
    ae.code_cov.copy_(torch.diag(torch.tensor([4.0, 0.25])))
    want = torch.tensor([1.0, -2.0]) + torch.tensor([2.0, 0.5]) * normal.icdf(u)[:, None]
    assert torch.allclose(prior_quantiles(ae, u), want, atol=1e-6)


def test_scatter_puts_each_class_colour_where_its_points_are() -> None:
    # Class 0 at the lower left, class 3 at the upper right (y points up in the image).
    z = torch.cat([torch.full((50, 2), -1.0), torch.full((50, 2), 1.0)])
    z += 0.01 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 50 + [3] * 50)
    img = scatter_image(z, labels, size=200)
    assert img.shape == (3, 224, 200)
    lower_left, upper_right = img[:, 150:200, 0:50], img[:, 0:50, 150:200]
    blue, red = torch.tensor([31, 119, 180]) / 255, torch.tensor([214, 39, 40]) / 255

    def has(region: torch.Tensor, color: torch.Tensor) -> bool:
        return ((region - color[:, None, None]).abs().amax(0) < 0.02).any().item()

    assert has(lower_left, blue) and not has(lower_left, red)
    assert has(upper_right, red) and not has(upper_right, blue)


def test_latent_tools_views_for_2d_and_higher_latents() -> None:
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 10
    tools = LatentTools(n_pairs=4, n_steps=6, manifold_size=5, n_scatter=40, min_size=8)
    vae2 = VAE((1, 8, 8), latent_dim=2, net={"hidden_sizes": [8]})
    assert LatentTools.applies(vae2)
    views = tools.draw(vae2, x, y)
    assert set(views) == {"latent_interpolations", "latent_manifold", "latent_scatter"}
    # 4 rows of 6 steps + 2 originals, 8x8 tiles with make_grid's 2-pixel padding.
    assert views["latent_interpolations"].shape == (3, 4 * 10 + 2, 8 * 10 + 2)
    assert views["latent_manifold"].shape == (3, 5 * 8, 5 * 8)
    vae8 = VAE((1, 8, 8), latent_dim=8, net={"hidden_sizes": [8]})
    assert set(tools.draw(vae8, x, y)) == {"latent_interpolations"}
    # The path's ends decode the two images' codes.
    xs = vae8.preprocess(x[:2])
    grid = interpolation_grid(vae8, xs, n_steps=3)  # one row: x0, 3 steps, x1
    with torch.no_grad():
        ends = vae8.mean(vae8.decode(vae8.encode(xs)[0]))
    first = grid[0, 2:10, 2 + 10 : 10 + 10]  # column 1 (t = 0), channel 0
    assert torch.allclose(first, ends[0, 0], atol=1e-6)
