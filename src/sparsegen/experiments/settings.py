"""What every experiment's grid is made of: :class:`Setting`, one mapping and its numeric
parameter. Kept free of heavy imports, so that the command line and the benchmark can
name settings without loading the experiments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Setting"]


@dataclass(frozen=True)
class Setting:
    """One mapping of a grid: a family name, the mapping (None = no attention; a loss for
    the multi-label experiments) and its parameter as a number: ``lam`` or ``q`` (learnt
    from its start value with ``learnable``), a ``temperature``, or a prediction rule's
    ``threshold``. ``label`` names the setting where an experiment's files use another
    name than the family and parameter make."""

    family: str
    mapping: str | None
    lam: float | None = None
    q: float | None = None
    learnable: bool = False
    temperature: float = 1.0
    threshold: float | None = None
    label: str | None = None

    @property
    def parameter(self) -> str:
        """``λ=0.5``, ``q=1``, ``t=0.5``, ``T=0.5``, ``learnt``, or empty."""
        if self.learnable:
            return "learnt"
        if self.lam is not None:
            return f"λ={self.lam:g}"
        if self.q is not None:
            return f"q={self.q:g}"
        if self.threshold is not None:
            return f"t={self.threshold:g}"
        return f"T={self.temperature:g}" if self.temperature != 1.0 else ""

    @property
    def value(self) -> float | None:
        """The numeric parameter :attr:`parameter` shows: λ, q, a threshold, or a
        temperature other than 1."""
        for value in (self.lam, self.q, self.threshold):
            if value is not None:
                return value
        return self.temperature if self.temperature != 1.0 else None

    @property
    def lam_value(self) -> float | None:
        """sparsegen-lin's fixed λ, sparsemax being λ = 0; None for any other setting."""
        if self.family == "sparsemax":
            return 0.0
        return self.lam if self.family == "sparsegen-lin" and not self.learnable else None

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        if self.learnable:
            return f"{self.family} (learnt)"
        return f"{self.family} {self.parameter}".strip()

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in ".-" else "_" for c in self.name)

    def mapping_options(self) -> dict[str, Any]:
        """The keywords an attention module takes beside its mapping's name: ``lam``, ``q``
        and ``learnable`` (a temperature only some models take)."""
        return {"lam": self.lam, "q": self.q, "learnable": self.learnable}
