"""The papers' pictures of the mappings (``sparsegen plot``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

import sparsegen as sg
from sparsegen.experiments.tables import pyplot, save_figure

# Laha et al., Fig. 1: ρ₁(z) for z = (t₁, t₂, 0), one panel per mapping.
CONTOUR_PANELS = {
    "softmax": sg.softmax,
    "sparsemax": sg.sparsemax,
    "sum-normalization": sg.sum_normalization,
    "sparsegen-lin, λ = −1": lambda z: sg.sparsegen_lin(z, lam=-1.0),
    "sparsegen-lin, λ = 0.5": lambda z: sg.sparsegen_lin(z, lam=0.5),
    "sparsegen-lin, λ = 0.8": lambda z: sg.sparsegen_lin(z, lam=0.8),
    "sparsehourglass, q = 0.1": lambda z: sg.sparsehourglass(z, q=0.1),
    "sparsehourglass, q = 1": lambda z: sg.sparsehourglass(z, q=1.0),
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


def _values(mapping, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _first_coordinate(mapping, t1, t2)


def _contour_panel(ax, title: str, mapping, t1: np.ndarray, t2: np.ndarray):
    """Filled contours of ρ₁(t₁, t₂, 0), with the exact-0 and exact-1 boundaries in white."""
    values = _values(mapping, t1, t2)
    filled = ax.contourf(t1, t2, values, levels=np.linspace(0, 1, 11), cmap="viridis")
    ax.contour(t1, t2, values, levels=[1e-9, 1 - 1e-9], colors="white", linewidths=0.8)
    ax.set_title(title)
    ax.set_xlabel("$t_1$")
    ax.set_ylabel("$t_2$")
    ax.set_aspect("equal")
    return filled


def _surface_panel(ax, title: str, mapping, t1: np.ndarray, t2: np.ndarray) -> None:
    """ρ₁(t₁, t₂, 0) as a 3-D surface."""
    ax.plot_surface(t1, t2, _values(mapping, t1, t2), cmap="viridis", vmin=0, vmax=1,
                    linewidth=0, rstride=2, cstride=2)  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("$t_1$")
    ax.set_ylabel("$t_2$")
    ax.zaxis.set_rotate_label(False)
    ax.set_zlabel(r"$\rho_1$", rotation=0)
    ax.set_zlim(0, 1)
    ax.view_init(elev=28, azim=-125)


def plot_mapping(title: str, mapping, path: Path, limit: float = 3.0) -> Path:
    """One mapping's contours and surface of ρ₁(t₁, t₂, 0) side by side (the docs' pages)."""
    plt = pyplot()
    t1, t2 = np.meshgrid(*[np.linspace(-limit, limit, 161)] * 2)
    fig = plt.figure(figsize=(11.5, 4.4), constrained_layout=True)
    filled = _contour_panel(fig.add_subplot(1, 2, 1), title, mapping, t1, t2)
    fig.colorbar(filled, ax=fig.axes[0], shrink=0.8, label=r"$\rho_1(t_1, t_2, 0)$")
    _surface_panel(fig.add_subplot(1, 2, 2, projection="3d"), title, mapping, t1, t2)
    return save_figure(fig, path, dpi=90, tight=False)


def plot_contours(out_dir: Path, limit: float = 3.0, points: int = 241) -> Path:
    """Laha et al.'s Fig. 1: filled contours of ρ₁(t₁, t₂, 0) for each mapping."""
    plt = pyplot()

    t = np.linspace(-limit, limit, points)
    t1, t2 = np.meshgrid(t, t)
    fig, axes = plt.subplots(3, 3, figsize=(12, 11), constrained_layout=True)
    for ax, (title, mapping) in zip(axes.flat, CONTOUR_PANELS.items(), strict=True):
        filled = _contour_panel(ax, title, mapping, t1, t2)
    fig.colorbar(filled, ax=axes, shrink=0.6, label=r"$\rho_1(t_1, t_2, 0)$")
    fig.suptitle(
        r"$\rho_1(z)$ for $z = (t_1, t_2, 0)$ (Laha et al. 2018, Fig. 1); white lines bound "
        "the regions where it is exactly 0 or 1; blank: undefined"
    )
    path = out_dir / "contours.png"
    return save_figure(fig, path, dpi=110, tight=False)


def plot_sparsity_regions(out_dir: Path, lam: float = 0.5, limit: float = 3.0) -> Path:
    """Laha et al.'s Fig. 2: support size of sparsegen-lin(λ) over z = (t₁, t₂, 0)."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    t = np.linspace(-limit, limit, 401)
    t1, t2 = np.meshgrid(t, t)
    z = torch.from_numpy(np.stack([t1, t2, np.zeros_like(t1)], axis=-1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, (title, value) in zip(
        axes, (("sparsemax (λ = 0)", 0.0), (f"sparsegen-lin, λ = {lam}", lam)), strict=True
    ):
        support = sg.sparsegen_lin(z, lam=value, return_info=True).support_size.numpy()
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
    return save_figure(fig, path, dpi=110, tight=False)


def cone_point(z: np.ndarray, q: float) -> np.ndarray:
    """Where the line from the anchor ``(−q, …, −q)`` through ``z`` meets ``Σ p = 1``.

    ``g(z) = α z + (1 − α)(−q·1)``, ``α = (1 + Kq)/(Σz + Kq)`` (Laha et al., §3.3);
    sparsecone is sparsemax of this point.
    """
    k = z.shape[-1]
    alpha = (1 + k * q) / (z.sum(-1, keepdims=True) + k * q)
    return alpha * z - (1 - alpha) * q


def mirror(z: np.ndarray) -> np.ndarray:
    """``z`` reflected across ``Σ z = 0``: sparsehourglass maps ``z`` as sparsecone maps this."""
    return z - 2 * z.sum(-1, keepdims=True) / z.shape[-1]


def _draw_construction(ax, mapping, z: np.ndarray, q: float, anchor: np.ndarray) -> None:
    """One sample point's path on ``ax``: ``z`` (mirrored first for sparsehourglass when
    ``Σz < 0``), the line from the anchor, its cone point ``g`` and the library's ``p``."""
    mirrored = mapping is sg.sparsehourglass and z.sum() < 0
    source = mirror(z) if mirrored else z
    g = cone_point(source, q)
    p = mapping(torch.from_numpy(z), q=q).numpy()
    if mirrored:
        ax.annotate("", source, z, arrowprops={"arrowstyle": "->", "ls": ":"})
        ax.plot(*source, "s", color="purple", ms=6)
        ax.annotate("z̃ (mirror of z)", source, xytext=(6, 4), textcoords="offset points")
    far = source if np.sum(source) > np.sum(g) else g  # the line runs through both
    ax.plot(*np.stack([anchor, far]).T, color="gray", lw=1)
    ax.plot(*np.stack([g, p]).T, color="black", lw=1, ls="--")
    ax.plot(*z, "o", color="purple", ms=6)
    ax.annotate("z", z, xytext=(6, 4), textcoords="offset points")
    ax.plot(*p, "o", color="darkgreen", ms=7)
    ax.annotate(f"p = ({p[0]:.2f}, {p[1]:.2f})", p, xytext=(6, -12),
                textcoords="offset points")  # fmt: skip


def plot_geometry(out_dir: Path, q: float = 1.0, limit: float = 3.0) -> Path:
    """Laha et al.'s Fig. 3: sparsecone's and sparsehourglass' geometry for K = 2.

    The plane is coloured by the library's support size (sparse: one nonzero;
    not sparse: two; blank: undefined); the construction is drawn for sample
    points with the mapped point ``p`` taken from the library.
    """
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    t = np.linspace(-limit, limit, 601)
    t1, t2 = np.meshgrid(t, t)
    plane = torch.from_numpy(np.stack([t1, t2], axis=-1))
    anchor = np.array([-q, -q])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True)
    panels = (
        ("(a) sparsecone", sg.sparsecone, [np.array([2.0, 1.2]), np.array([0.4, -0.6])]),
        ("(b) sparsehourglass", sg.sparsehourglass, [np.array([1.0, 2.0]), np.array([-0.4, -2.6])]),
    )
    for ax, (title, mapping, samples) in zip(axes, panels, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mapping(plane, q=q, return_info=True)
        support = np.where(np.isnan(info.output[..., 0].numpy()), np.nan, info.support_size)
        ax.contourf(
            t1, t2, support, levels=[0.5, 1.5, 2.5], cmap=ListedColormap(["#f4a6a6", "#a6c8f4"])
        )
        ax.plot([1, 0], [0, 1], color="green", lw=3, label="simplex Δ¹")
        ax.plot(*anchor, "ko", ms=6)
        ax.annotate(f"anchor (−{q:g}, −{q:g})", anchor, xytext=(6, -14), textcoords="offset points")
        if mapping is sg.sparsecone:
            edge = np.array([-limit, limit])
            ax.plot(edge, -2 * q - edge, "k--", lw=1, label="Σz = −Kq: undefined beyond")
        else:
            ax.plot([-limit, limit], [limit, -limit], "k:", lw=1, label="Σz = 0: mirror line")
        for z in samples:
            _draw_construction(ax, mapping, z, q, anchor)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_title(f"{title}, q = {q:g}: red sparse, blue not sparse")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        "Laha et al. (2018), Fig. 3: z is carried along the line from the anchor to Σp = 1 "
        "(grey), then projected on the simplex (dashed) to p"
    )
    path = out_dir / "geometry.png"
    return save_figure(fig, path, dpi=110, tight=False)


def plot_surfaces(out_dir: Path, limit: float = 3.0, points: int = 81) -> Path:
    """Martins & Astudillo's 3-D view: the surface ρ₁(t₁, t₂, 0) of each mapping."""
    plt = pyplot()

    t = np.linspace(-limit, limit, points)
    t1, t2 = np.meshgrid(t, t)
    fig = plt.figure(figsize=(13, 12), constrained_layout=True)
    for index, (title, mapping) in enumerate(CONTOUR_PANELS.items(), start=1):
        _surface_panel(fig.add_subplot(3, 3, index, projection="3d"), title, mapping, t1, t2)
    fig.suptitle(
        r"$\rho_1(t_1, t_2, 0)$ as a surface (Martins & Astudillo 2016, Fig. 1, right): "
        "flat plateaus at 0 and 1 are exact zeros and ones; gaps: undefined"
    )
    path = out_dir / "surfaces.png"
    return save_figure(fig, path, dpi=100, tight=False)


# The docs' page per mapping: file stem -> (title, mapping).
MAPPING_PAGES = {
    "softmax": ("softmax", sg.softmax),
    "sparsemax": ("sparsemax", sg.sparsemax),
    "sparsegen": ("sparsegen, g = tanh, λ = 0.5", lambda z: sg.sparsegen(z, torch.tanh, lam=0.5)),
    "sparsegen-lin": ("sparsegen-lin, λ = 0.5", lambda z: sg.sparsegen_lin(z, lam=0.5)),
    "sparsegen-exp": ("sparsegen-exp, λ = 0", lambda z: sg.sparsegen_exp(z, lam=0.0)),
    "sparsegen-sq": ("sparsegen-sq, λ = 0", lambda z: sg.sparsegen_sq(z, lam=0.0)),
    "sparsecone": ("sparsecone, q = 1", lambda z: sg.sparsecone(z, q=1.0)),
    "sparsehourglass": ("sparsehourglass, q = 0.5", lambda z: sg.sparsehourglass(z, q=0.5)),
    "sum-normalization-pp": ("sum-normalization++", sg.sum_normalization_pp),
    "others": ("spherical softmax", sg.spherical_softmax),
}


def plot_mapping_pages(out_dir: Path) -> list[Path]:
    """The figure of each docs page (``docs/mappings/img``): contours and surface of ρ₁."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_mapping(title, f, out_dir / f"{stem}.png") for stem, (title, f) in
            MAPPING_PAGES.items()]  # fmt: skip


def plot_all(out_dir: Path) -> list[Path]:
    """Every figure, as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_contours(out_dir),
        plot_sparsity_regions(out_dir),
        plot_geometry(out_dir),
        plot_surfaces(out_dir),
    ]
