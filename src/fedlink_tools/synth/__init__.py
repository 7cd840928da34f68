"""Synthetic departments with realistic identifier errors and the ground truth to check linkage.

>>> from fedlink_tools.synth import CorruptionRates
>>> CorruptionRates.zero().for_node("charity_north").missing_dob
0.0
"""

from fedlink_tools.synth.config import CorruptionRates, default_corruption, load_corruption_config
from fedlink_tools.synth.generate import SynthSummary, synthesize

__all__ = ["CorruptionRates", "SynthSummary", "default_corruption", "load_corruption_config", "synthesize"]
