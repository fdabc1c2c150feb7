"""Pure detectors: no I/O; each has ``snapshot()`` and ``restore()``."""

from .drift import AdwinDetector, PageHinkleyDetector
from .episode import Episode, Transition
from .psi import PsiWindow, psi

__all__ = ["AdwinDetector", "PageHinkleyDetector", "Episode", "Transition", "PsiWindow", "psi"]
