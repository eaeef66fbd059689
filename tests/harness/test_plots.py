"""`sparsegen plot`: the figures are drawn from the library's own outputs."""

import numpy as np
import pytest
import torch

import sparsegen as sg
from sparsegen import plots
from sparsegen.cli import main


def test_contour_values_are_the_mappings_first_coordinate():
    t1, t2 = np.meshgrid(np.linspace(-2, 2, 5), np.linspace(-2, 2, 5))
    values = plots._first_coordinate(plots.CONTOUR_PANELS["sparsemax"], t1, t2)
    # on the t1 axis, z = (t, 0, 0): t = 2 puts all the mass on the first entry,
    # t = -2 none (sparsemax(-2, 0, 0) = (0, 1/2, 1/2)).
    assert values[2, 4] == 1.0 and values[2, 0] == 0.0
    sum_norm = plots._first_coordinate(plots.CONTOUR_PANELS["sum-normalization"], t1, t2)
    assert np.isnan(sum_norm[0, 0]) and sum_norm[4, 4] == 0.5  # undefined where negative


def test_cli_writes_the_figures(tmp_path):
    assert main(["plot", "--out", str(tmp_path)]) == 0
    for name in ("contours.png", "sparsity_regions.png", "geometry.png", "surfaces.png"):
        assert (tmp_path / name).stat().st_size > 20_000


@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_fig3_construction_is_the_mapping(q, rng):
    """The drawn construction (anchor line, then projection) gives the library's output."""
    z = rng.normal(size=(200, 2)) * 2
    cone_defined = z.sum(1) > -2 * q
    g = plots.cone_point(z[cone_defined], q)
    np.testing.assert_allclose(g.sum(1), 1.0)  # on the simplex's hyperplane
    np.testing.assert_allclose(
        sg.sparsemax(torch.from_numpy(g)).numpy(),
        sg.sparsecone(torch.from_numpy(z[cone_defined]), q=q).numpy(),
        atol=1e-12,
    )
    negative = z[z.sum(1) < 0]
    mirrored = plots.mirror(negative)
    np.testing.assert_allclose(mirrored.sum(1), -negative.sum(1))
    np.testing.assert_allclose(
        sg.sparsecone(torch.from_numpy(mirrored), q=q).numpy(),
        sg.sparsehourglass(torch.from_numpy(negative), q=q).numpy(),
        atol=1e-12,
    )
