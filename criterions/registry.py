"""The loss registry: every loss module registers itself here by name on import."""
from __future__ import annotations

from utils.registry import Registry

CRITERIONS = Registry("--criterion")
register_criterion = CRITERIONS.register
