"""``ctgrid aggregate RESULTS [RESULTS ...]``: tables, figures and a summary from finished jobs."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_aggregate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "aggregate", help="Parquet results -> the paper's tables (md/tex/csv), figures, summary.md",
        description="Read the finished jobs of one or more results directories (a grid's "
                    "directory, or a directory of grids) and write Table 1 (key results, CT vs the "
                    "paired baseline), Table 2 (final hyper-parameters), Tables 3-5 (predictive "
                    "performance per grid), the appendix figures and summary.md.")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results directory (results/<grid>)")
    p.add_argument("--out", help="output directory (default: RESULTS/aggregate for one input)")
    p.add_argument("--format", default="md,tex,csv", help="comma-separated table formats: md, tex, csv")
    ces = p.add_mutually_exclusive_group()
    ces.add_argument("--valid-only", dest="valid_only", action="store_true",
                     help="IP and cost over valid counterfactuals only (the reference's choice; "
                          "biased when validity differs)")
    ces.add_argument("--all-ces", dest="valid_only", action="store_false",
                     help="IP and cost over all counterfactuals (default)")
    p.set_defaults(valid_only=False)
    pred = p.add_mutually_exclusive_group()
    pred.add_argument("--exclude-predicted", dest="exclude_predicted", action="store_true",
                      help="Table 1: compare a BL/CT pair only on individuals for which neither "
                           "model already predicts the target (default)")
    pred.add_argument("--keep-predicted", dest="exclude_predicted", action="store_false",
                      help="Table 1: keep every individual, also those whose target a model "
                           "already predicts (ctgrid < 0.2)")
    p.set_defaults(exclude_predicted=True)
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (1000)")
    p.add_argument("--confidence", type=float, default=0.99, help="interval level (0.99)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and figure draws (0)")
    p.add_argument("--interval", choices=("bootstrap", "within-model", "runs"), default="bootstrap",
                   help="bootstrap: two-stage percentile bootstrap, trained models (seeds) then runs or "
                        "factuals within each (default); within-model: runs/factuals of all models "
                        "pooled, the models held fixed; runs: the reference's quantiles of the per-run values")
    p.add_argument("--pool-settings", action="store_true",
                   help="Table 1: one row per dataset pooling all CT settings (default: one per setting)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="tables only")
    p.add_argument("--skip-damaged", action="store_true",
                   help="leave out done jobs whose files no longer match their done.json (listed in "
                        "summary.md's notes; see ctgrid verify) instead of stopping with exit 2")
    p.add_argument("--data-dir", help="raw data files for sizes and the MNIST figure "
                                      "(default: $CTGRID_DATA)")
    from ._process import add_device
    add_device(p, "the model-based figures (MNIST counterfactuals, FGSM sweep, consistency)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..aggregate import AggregateOptions, aggregate
    from ..device import parse_device
    formats = tuple(f.strip() for f in str(args.format).split(",") if f.strip())
    opts = AggregateOptions(formats=formats, valid_only=args.valid_only, bootstrap=args.bootstrap,
                            confidence=args.confidence, seed=args.seed, interval=args.interval,
                            pool_settings=args.pool_settings, figures=args.figures,
                            exclude_predicted=args.exclude_predicted,
                            data_dir=args.data_dir, skip_damaged=args.skip_damaged,
                            device=parse_device(args.device))
    if args.out is None and len(args.results) != 1:
        raise ConfigError("--out: required when aggregating several RESULTS directories")
    out = Path(args.out) if args.out else Path(args.results[0]) / "aggregate"
    written = aggregate(args.results, out, opts)
    for table in ("consistency", "consistency_contrasts"):  # the answer of a consistency grid
        if out / f"{table}.md" in written:
            print((out / f"{table}.md").read_text(encoding="utf-8"))
    print(f"wrote {len(written)} files to {out}; see {written[-1]}")
    return 0
