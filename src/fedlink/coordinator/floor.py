"""The privacy-loss floor: a query whose noise would drown every answer is refused before it costs.

A count released with noise whose 95% interval is wider than every value the count can take tells
the analyst nothing the catalogue did not already say, yet each node would reserve and spend for it
(and the client would have to state an interval for an astronomically wide noise). So before any
node reserves, the coordinator refuses a query whose loss is under this floor:

- the noise considered is the least any node could add to one of the query's counts: one row a
  person (sensitivity 1; tables that declare more rows a person add more), the loss split over the
  plan's components as nodes split it (over the iterations for a model, whose statistics include
  the row count);
- its 95% half-width is ``b ln 20`` for Laplace noise of scale ``b`` (epsilon) and ``1.96 sigma``
  for Gaussian noise (rho), at one node (more nodes only add noise);
- the largest value a count can take is bounded with public metadata only: the catalogue's row
  counts, rounded to 100, plus 50 each (so never below the truth), summed over the nodes holding the
  table; for a linked query, the smallest such total over its tables (a linked person has a row in
  each).

If that half-width reaches the bound, the interval of every count covers all it could be: the query
is refused with the smallest loss that clears the floor. The floor depends only on the plan, the
declared loss and the catalogue, so it costs nothing and is the same for every analyst.
"""

from __future__ import annotations

import math

from fedlink.errors import BadInput
from fedlink.plan.aggregate import AggregatePlan
from fedlink.plan.catalogue import FederationCatalogue
from fedlink.plan.linked_query import LinkedPlan
from fedlink.plan.model import ModelPlan
from fedlink.protocol.tasks import PrivacyLoss

#: 95% two-sided quantiles of one Laplace draw (in units of its scale) and of one normal draw.
LAPLACE_95 = math.log(20)
NORMAL_95 = 1.959964


def _rows_bound(catalogue: FederationCatalogue, table: str, nodes: tuple[str, ...]) -> int:
    """The most rows ``table`` can hold at ``nodes``, from the catalogue's counts rounded to 100."""
    return sum(info.rows_rounded + 50 for status, info in catalogue.declaring(table) if status.node in nodes)


def _count_bound(plan: AggregatePlan | LinkedPlan | ModelPlan, catalogue: FederationCatalogue) -> int:
    if isinstance(plan, LinkedPlan):
        return min(_rows_bound(catalogue, source.table, source.nodes) for source in plan.sources)
    return _rows_bound(catalogue, plan.table, plan.nodes)


def check_informative(
    loss: PrivacyLoss, plan: AggregatePlan | LinkedPlan | ModelPlan, catalogue: FederationCatalogue
) -> None:
    """Refuse (:class:`BadInput`) a privacy loss under the floor described in this module."""
    if loss.is_zero:
        return  # a noiseless test-mode query: no noise to drown anything
    bound = _count_bound(plan, catalogue)
    if isinstance(plan, ModelPlan):
        parts, sensitivity = plan.iterations, plan.sensitivity(1)
    else:
        parts, sensitivity = len(plan.components), 1.0
    if loss.epsilon > 0:
        half = sensitivity * parts / loss.epsilon * LAPLACE_95
        needed, name, value = sensitivity * parts * LAPLACE_95 / bound, "epsilon", loss.epsilon
    else:
        half = sensitivity * math.sqrt(parts / (2 * loss.rho)) * NORMAL_95
        needed, name, value = parts * (sensitivity * NORMAL_95 / bound) ** 2 / 2, "rho", loss.rho
    if half >= bound:
        unit = 10.0 ** (math.floor(math.log10(needed)) - 1)
        least = math.floor(needed / unit + 1) * unit  # two figures, strictly above the floor
        what = "statistic" if isinstance(plan, ModelPlan) else "count"
        width = f"{half:,.0f}" if half < 1e12 else f"{half:.3g}"
        raise BadInput(
            f"{name} {value:g} is too small to tell anything: the 95% interval of each {what} would be at least "
            f"±{width}, wider than the {bound:,} rows the data hold at most, so the answer would be noise; "
            f"declare {name} {least:g} or more"
        )
