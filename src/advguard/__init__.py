"""advguard: inference-time defenses against adversarial examples, and honest measurement of how
much they help."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
