"""Accountability: the budget ledger, the audit log, signatures and the working store.

What the notices ask of whoever holds the data: a budget that binds per declared
population (``ledger``), an append-only record of who did what (``audit``), releases
that can be told from forgeries (``signing``), and personal data encrypted at rest and
purged on time (``store``).
"""
