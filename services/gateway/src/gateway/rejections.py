"""Which problems are rejections: refused for a security or abuse reason, and audited as such."""

from __future__ import annotations


class Rejection:
    """Mixin for problems that reject a request for a security or abuse reason.

    ``reason`` is a short, fixed label (it becomes a Prometheus label value). The edge
    (:func:`gateway.edge.rejection_middleware`) logs each one as a ``security`` event.
    """

    reason: str = "rejected"
