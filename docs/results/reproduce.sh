#!/usr/bin/env bash
# Re-run the reproduction in docs/results/ from the repository root:
#   bash docs/results/reproduce.sh              # run every grid, then aggregate
#   bash docs/results/reproduce.sh aggregate    # aggregate existing results only
#   bash docs/results/reproduce.sh consistency  # the consistency grid, then its aggregate (~2.5 h)
# Needs the venv of the README with the mpich extra (mpiexec) and the real data in
# $CTGRID_DATA (default ../shared/data). Results go to results/<grid>/ (not committed);
# aggregated tables and figures to docs/results/.
set -euo pipefail
export CTGRID_DATA="${CTGRID_DATA:-$(cd .. && pwd)/shared/data}"
export PATH="$PWD/.venv/bin:$PATH"
NP="${NP:-3}"                       # rank 0 schedules, NP-1 workers
SEEDS='training.seed=[0,1,2,3,4]'   # five training seeds per dataset (issue 24): the intervals' outer unit
REPORT_GRIDS="mutability_normalized mutability_reference mutability_reference_normalized mutability_noadv final_onehot_step final_onehot_end gmsc_lambda_reg gmsc_ablation"

if [ "${1:-run}" = consistency ]; then
    mpiexec -n "$NP" ctgrid run grids/consistency.yaml --results results
    ctgrid aggregate results/consistency --out docs/results/consistency
    exit 0
fi

if [ "${1:-run}" = run ]; then
    for g in final mutability; do
        mpiexec -n "$NP" ctgrid run "grids/$g.yaml" "$SEEDS" --results results
    done
    for g in $REPORT_GRIDS; do
        mpiexec -n "$NP" ctgrid run "docs/results/grids/$g.yaml" --results results
    done
fi

out=docs/results
ctgrid aggregate results/final --out "$out/final" --format md,csv
ctgrid aggregate results/mutability --out "$out/mutability" --format md,csv
# Table 1 as the paper lays it out: IP from the final runs, cost from the mutability runs
ctgrid aggregate results/final results/mutability --out "$out/table1" --format md,csv
# the same, intervals within the model pairs (the trained models held fixed; before issue 24)
ctgrid aggregate results/final results/mutability --out "$out/table1_within_model" --format md,csv --no-figures \
    --interval within-model
# the same pairs with every individual kept (the protocol before ctgrid 0.2)
ctgrid aggregate results/final --out "$out/final_keep_predicted" --format md,csv --no-figures --keep-predicted
for g in $REPORT_GRIDS; do
    ctgrid aggregate "results/$g" --out "$out/variants/$g" --format md,csv --no-figures
done
python docs/results/job_times.py results/final results/mutability > "$out/job_times.md"
python docs/results/seed_spread.py results/final results/mutability > "$out/seed_spread.md"
python docs/results/gradient_share.py results/final results/mutability results/mutability_noadv \
    results/mutability_reference > "$out/gradient_share.md"
