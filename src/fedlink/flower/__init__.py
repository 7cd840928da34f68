"""fedlink on Flower's deployment runtime, for organisations that already run a SuperLink and SuperNodes.

- :mod:`fedlink.flower.apps`: the node's operators as a Flower ``ClientApp`` (one message type per
  operator: ``query.catalogue``, ``query.reserve``, ``query.execute``, ``query.abort``, ``query.budget``,
  ``query.model``), and a ``ServerApp`` that runs a fedlink coordinator over Flower's ``Grid`` (the
  same planning, policy, budgets, encrypted aggregation and register as over fedlink's own gRPC);
- :mod:`fedlink.flower.analyst`: the analyst's side (:class:`FlowerFederation`): fresh HE keys, the
  request handed to ``flwr run``, the encrypted result read back and decrypted here;
- ``bundle/``: the Flower App (``flwr run`` builds it into a FAB; its code is the installed fedlink).

Install with ``pip install 'fedlink[flower]'``. Flower's telemetry and update checks are switched
off for every process fedlink starts, and SuperLinks and SuperNodes must run with
``--disable-runtime-dependency-installation``: nothing is downloaded at run time.
"""

from fedlink.flower.analyst import FLOWER_ENV, FlowerFederation, bundle_dir

__all__ = ["FLOWER_ENV", "FlowerFederation", "bundle_dir"]
