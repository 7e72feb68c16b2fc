"""The job, orchestrated: plan before data, charge, run, publish.

``plan`` fixes every table from the config alone and explains it; ``charging`` reserves
and commits the ledger around a run; ``run`` drives the engine and the privacy layer
once; ``publish`` writes the signed folder with its reports. This layer sits above
``release`` and ``report`` and calls them; nothing below imports it.
"""
