#!/usr/bin/env bash
# Re-run the reproduction in docs/results/ from the repository root:
#   bash docs/results/reproduce.sh                     # run every grid, then aggregate (the whole paper)
#   bash docs/results/reproduce.sh aggregate           # aggregate existing results only
#   bash docs/results/reproduce.sh run appendix        # one part: main | consistency | appendix | all
# Needs the venv of the README with the mpich extra (mpiexec) and the real data in
# $CTGRID_DATA (default ../shared/data). Results go to results/<grid>/ (not committed);
# aggregated tables and figures to docs/results/. Each grid's wall time and peak memory are
# appended to results/reproduce-times.txt.
set -euo pipefail
export CTGRID_DATA="${CTGRID_DATA:-$(cd .. && pwd)/shared/data}"
export PATH="$PWD/.venv/bin:$PATH"
NP="${NP:-3}"                       # rank 0 schedules, NP-1 workers
SEEDS='training.seed=[0,1,2,3,4]'   # five training seeds per dataset (issue 24): the intervals' outer unit
STAGE="${1:-run}"
PART="${2:-all}"
REPORT_GRIDS="mutability_normalized mutability_reference mutability_reference_normalized mutability_noadv final_onehot_step final_onehot_end gmsc_lambda_reg gmsc_ablation"
APPENDIX_GRIDS="penalties gen_params training_params tune tune_lr"
case "$STAGE" in run|aggregate) ;; *) echo "usage: $0 [run|aggregate] [main|consistency|appendix|all]" >&2; exit 2;; esac
case "$PART" in main|consistency|appendix|all) ;; *) echo "usage: $0 [run|aggregate] [main|consistency|appendix|all]" >&2; exit 2;; esac
mkdir -p results

part() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }

timed_run() {   # timed_run GRID_FILE [OVERRIDE...]: run a grid under mpiexec, log wall time and peak RSS
    local start end
    start=$(date +%s)
    /usr/bin/time -f "%M" -o results/.rss mpiexec -n "$NP" ctgrid run "$@" --results results
    end=$(date +%s)
    echo "$(basename "$1" .yaml) wall_s=$((end - start)) peak_rss_kb=$(cat results/.rss)" >> results/reproduce-times.txt
}

if [ "$STAGE" = run ]; then
    if part main; then
        for g in final mutability; do timed_run "grids/$g.yaml" "$SEEDS"; done
        for g in $REPORT_GRIDS; do timed_run "docs/results/grids/$g.yaml"; done
    fi
    if part consistency; then timed_run grids/consistency.yaml; fi
    if part appendix; then
        for g in $APPENDIX_GRIDS; do timed_run "grids/$g.yaml"; done
    fi
fi

out=docs/results
if part main; then
    ctgrid aggregate results/final --out "$out/final" --format md,csv
    ctgrid aggregate results/mutability --out "$out/mutability" --format md,csv
    # Table 1 as the paper lays it out: IP from the final runs, cost from the mutability runs
    ctgrid aggregate results/final results/mutability --out "$out/table1" --format md,csv
    # the same, intervals within the model pairs (the trained models held fixed; before issue 24)
    ctgrid aggregate results/final results/mutability --out "$out/table1_within_model" --format md,csv \
        --no-figures --interval within-model
    # the same pairs with every individual kept (the protocol before ctgrid 0.2)
    ctgrid aggregate results/final --out "$out/final_keep_predicted" --format md,csv --no-figures --keep-predicted
    for g in $REPORT_GRIDS; do
        ctgrid aggregate "results/$g" --out "$out/variants/$g" --format md,csv --no-figures
    done
    python docs/results/job_times.py results/final results/mutability > "$out/job_times.md"
    python docs/results/seed_spread.py results/final results/mutability > "$out/seed_spread.md"
    python docs/results/gradient_share.py results/final results/mutability results/mutability_noadv \
        results/mutability_reference > "$out/gradient_share.md"
fi
if part consistency; then
    ctgrid aggregate results/consistency --out "$out/consistency"
fi
if part appendix; then
    # the appendix: one folder per grid (Tables 3-5 are each grid's predictive_<grid>.md)
    for g in $APPENDIX_GRIDS; do
        ctgrid aggregate "results/$g" --out "$out/appendix/$g" --format md,csv
    done
    python docs/results/job_times.py $(printf 'results/%s ' $APPENDIX_GRIDS) > "$out/appendix/job_times.md"
fi
