"""The privacy layer: one table spec, one noise path, one accountant.

``keys`` (public key sets over a boundary), ``tablespec`` (keys, sensitivity, noise,
threshold and cost per released table — the one budget split), ``mechanism`` and
``sparse`` (OpenDP samplers; the only place noise is drawn), ``noising`` (noise,
suppression and intervals for every table), ``intervals`` (selection-aware 95 %
intervals), ``accountant`` (exact privacy costs, composed in zCDP), ``tree`` (PrivTree
partitions over the H3 hierarchy for adaptive releases) and ``consistency`` (least-squares
post-processing so a parent equals the sum of its children). Below it everything is exact; above
it everything is post-processing.
"""
