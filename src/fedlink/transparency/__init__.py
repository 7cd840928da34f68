"""The transparency register every party keeps (:mod:`.register`: append-only, hash-chained,
verifiable) and what a request puts on it (:mod:`.records`). Auditing every party's register together
is :mod:`fedlink.governance`."""
