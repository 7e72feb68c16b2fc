"""Stages that touch each ping: the top of the data flow, run on an engine.

``ingest`` (schema, coordinates, times; bad rows quarantined with reasons) → ``pii``
(refuse inputs that still carry identifiers) → ``scope`` (key groups only) →
``pseudonymise`` (keyed HMAC) → ``crs`` + ``index`` (GCJ-02/BD-09 → WGS-84 → H3 cell,
time → window) → ``bound`` (each person's contribution capped) → ``aggregate`` (exact
distinct-person counts, a private type). Nothing here draws noise or writes a release.
"""
