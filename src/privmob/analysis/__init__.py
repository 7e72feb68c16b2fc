"""Analysis around releases: forecasts of released series, utility evaluation, risk.

``forecast`` is post-processing of published counts (no budget); ``evaluate`` compares
a release with the exact truth in simulations; ``risk`` measures how identifying
*unreleased* traces are (unicity), the case for everything else. Optional extras
([forecast], [eval]) are imported only here.
"""
