"""The baselines' option dataclasses, gathered for ``config.py`` (each is declared next to its algorithm)."""
from .clip_pseudolabel import FPLOptions, GRIPOptions, IFPLOptions
from .debiaspl import DebiasPLOptions
from .flexmatch import FlexMatchOptions
from .freematch import FreeMatchOptions
from .pseudolabel import PseudoLabelOptions
from .softmatch import SoftMatchOptions
from .ulfine import ULFineOptions

__all__ = ["DebiasPLOptions", "FPLOptions", "GRIPOptions", "IFPLOptions", "FlexMatchOptions", "FreeMatchOptions", "PseudoLabelOptions", "SoftMatchOptions", "ULFineOptions"]
