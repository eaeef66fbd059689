"""The papers' pictures of the mappings (``sparsegen plot``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

import sparsegen as sg

# Laha et al., Fig. 1: ρ₁(z) for z = (t₁, t₂, 0), one panel per mapping.
CONTOUR_PANELS = {
    "softmax": sg.softmax,
    "sparsemax": sg.sparsemax,
    "sum-normalization": sg.sum_normalization,
    "sparsegen-lin, λ = −1": lambda z: sg.sparsegen_lin(z, -1.0),
    "sparsegen-lin, λ = 0.5": lambda z: sg.sparsegen_lin(z, 0.5),
    "sparsegen-lin, λ = 0.8": lambda z: sg.sparsegen_lin(z, 0.8),
    "sparsehourglass, q = 0.1": lambda z: sg.sparsehourglass(z, 0.1),
    "sparsehourglass, q = 1": lambda z: sg.sparsehourglass(z, 1.0),
    "sum-normalization++": sg.sum_normalization_pp,
}


def _first_coordinate(mapping, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    z = torch.from_numpy(np.stack([t1, t2, np.zeros_like(t1)], axis=-1))
    try:
        return mapping(z)[..., 0].numpy()
    except ValueError:  # sum-normalization refuses negative scores: plot where it is defined
        defined = (z >= 0).all(-1)
        out = np.full(t1.shape, np.nan)
        out[defined.numpy()] = mapping(z[defined])[..., 0].numpy()
        return out


def plot_contours(out_dir: Path, limit: float = 3.0, points: int = 241) -> Path:
    """Laha et al.'s Fig. 1: filled contours of ρ₁(t₁, t₂, 0) for each mapping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(-limit, limit, points)
    t1, t2 = np.meshgrid(t, t)
    fig, axes = plt.subplots(3, 3, figsize=(12, 11), constrained_layout=True)
    levels = np.linspace(0, 1, 11)
    for ax, (title, mapping) in zip(axes.flat, CONTOUR_PANELS.items(), strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = _first_coordinate(mapping, t1, t2)
        filled = ax.contourf(t1, t2, values, levels=levels, cmap="viridis")
        ax.contour(t1, t2, values, levels=[1e-9, 1 - 1e-9], colors="white", linewidths=0.8)
        ax.set_title(title)
        ax.set_xlabel("$t_1$")
        ax.set_ylabel("$t_2$")
        ax.set_aspect("equal")
    fig.colorbar(filled, ax=axes, shrink=0.6, label=r"$\rho_1(t_1, t_2, 0)$")
    fig.suptitle(
        r"$\rho_1(z)$ for $z = (t_1, t_2, 0)$ (Laha et al. 2018, Fig. 1); white lines bound "
        "the regions where it is exactly 0 or 1; blank: undefined"
    )
    path = out_dir / "contours.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sparsity_regions(out_dir: Path, lam: float = 0.5, limit: float = 3.0) -> Path:
    """Laha et al.'s Fig. 2: support size of sparsegen-lin(λ) over z = (t₁, t₂, 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    t = np.linspace(-limit, limit, 401)
    t1, t2 = np.meshgrid(t, t)
    z = torch.from_numpy(np.stack([t1, t2, np.zeros_like(t1)], axis=-1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, (title, value) in zip(
        axes, (("sparsemax (λ = 0)", 0.0), (f"sparsegen-lin, λ = {lam}", lam)), strict=True
    ):
        support = sg.sparsegen_lin(z, value, return_info=True).support_size.numpy()
        image = ax.contourf(
            t1,
            t2,
            support,
            levels=[0.5, 1.5, 2.5, 3.5],
            cmap=ListedColormap(["#fde725", "#21918c", "#440154"]),
        )
        ax.set_title(title)
        ax.set_xlabel("$t_1$")
        ax.set_ylabel("$t_2$")
        ax.set_aspect("equal")
    bar = fig.colorbar(image, ax=axes, ticks=[1, 2, 3], shrink=0.8)
    bar.set_label("support size (non-zero outputs)")
    fig.suptitle("Sparse and non-sparse regions for z = (t₁, t₂, 0) (Laha et al. 2018, Fig. 2)")
    path = out_dir / "sparsity_regions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_contours(out_dir), plot_sparsity_regions(out_dir)]
