"""The release: the only public result type and the two accounts of how it was made.

``table`` holds :class:`~privmob.release.table.ReleasedTable` (noisy counts, intervals,
signed folder writing); ``manifest`` builds the public manifest (parameters, budget,
noisy numbers only) and the operator record (exact figures, kept 0600 by the operator).
"""
