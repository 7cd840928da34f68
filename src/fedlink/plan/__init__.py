"""The typed plan every party runs: what a query computes (:mod:`.aggregate`, :mod:`.linked_query`,
:mod:`.model`), over which tables (:mod:`.catalogue`) and how its cells are protected
(:mod:`.disclosure`). Data and arithmetic only: it imports no PET, no protocol and no role; a PET's
parameters are passed in."""
