"""Aggregation: the Parquet results of grid runs -> the paper's tables and figures.

``aggregate(["results/penalties"], "results/penalties/aggregate")`` (or
``ctgrid aggregate results/penalties``) writes Table 1 (key results, paired CT vs
baseline), Table 2 (final hyper-parameters with true data sizes), Tables 3–5
(predictive performance per grid), the appendix figures and ``summary.md``.
"""
from .load import Results, Source
from .pairing import Reduction, pair_jobs, reduction
from .render import FORMATS, Table
from .report import AggregateOptions, aggregate, build_tables
from .wide import load_results

__all__ = ["AggregateOptions", "FORMATS", "Reduction", "Results", "Source", "Table", "aggregate",
           "build_tables", "load_results", "pair_jobs", "reduction"]
