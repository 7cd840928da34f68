"""The coordinator's linkage unit on Spark (``[linkage] engine = "spark"`` in coordinator.toml).

:class:`SparkLinkage` gives :class:`fedlink.coordinator.linkage.LinkageUnit` the two linking steps it
otherwise runs in process, computed by :mod:`fedlink.linkage.spark_unit` on the configured cluster:
the same spine on the same encodings. Everything else (agreeing the link secret, collecting the
encodings, slots, the released quality) stays where it was. pyspark loads only when a link runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedlink.coordinator.config import LinkageEngineSection
from fedlink.linkage.cluster import Spine
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.probabilistic import ProbabilisticLinkage
from fedlink.linkage.spec import LinkageSpec


class SparkLinkage:
    """Links on the Spark cluster of ``section``; the session starts at the first link."""

    def __init__(self, section: LinkageEngineSection) -> None:
        self._section = section
        self._session: Any = None

    def _spark(self) -> Any:
        if self._session is None:
            from fedlink.linkage.spark_unit import spark_session

            self._session = spark_session(self._section.spark_master, self._section.spark_conf)
        return self._session

    def probabilistic(self, parties: Sequence[EncodedRecords], spec: LinkageSpec) -> ProbabilisticLinkage:
        from fedlink.linkage.spark_unit import link_probabilistic_on_spark

        section = self._section
        return link_probabilistic_on_spark(
            parties, spec, self._spark(), section.spark_work_dir, partitions=section.spark_partitions
        )

    def clk(self, parties: Sequence[EncodedRecords]) -> Spine:
        from fedlink.linkage.spark_unit import cluster_on_spark

        section = self._section
        return cluster_on_spark(parties, self._spark(), section.spark_work_dir, partitions=section.spark_partitions)


def linkage_engine(section: LinkageEngineSection) -> SparkLinkage | None:
    """The engine ``section`` names, or None for the in-process unit."""
    return SparkLinkage(section) if section.engine == "spark" else None
