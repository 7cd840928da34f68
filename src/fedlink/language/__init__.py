"""The user's languages, each parsed and bound to the federation's catalogue into a plan
(:mod:`fedlink.plan`): SQL aggregate queries (:mod:`.sql`), LINK queries over the link spine
(:mod:`.linked_query`) and model formulas (:mod:`.model_formula`)."""
