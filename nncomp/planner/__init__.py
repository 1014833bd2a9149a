"""The planner: ``nc.optimize`` picks, per layer, the format that is fastest as measured on this machine
(or smallest on disk) within an accuracy budget.

- :mod:`.candidates`  one-layer candidates and channel groups' filter pruning, built by nncomp's methods, refit
- :mod:`.latency`     whole-model timing with one layer changed; the on-disk cache per CPU and versions
- :mod:`.screen`      which candidates are timed and built: proxies, a large model's layers timed alone first
- :mod:`.search`      exact (``scipy.optimize.milp``) and greedy searches, the verified re-search and the repair loop
- :mod:`.allocation`  ``objective="size"``: Deep Compression's global allocations, built jointly, verified
- :mod:`.optimize`    the public function: split, evaluate (joblib jobs), measure, search, verify
- :mod:`.report`      the plan a returned model carries (``model.plan``), saved by ``nc.save``
- :mod:`.metrics`     named scores for ``metric=`` (a map's IoU, outputs' cosine similarity) and the CLI's --metric
"""
from .optimize import Planner, optimize
from .report import LayerChoice, OptimizationPlan

__all__ = ["optimize", "Planner", "OptimizationPlan", "LayerChoice"]
