#!/usr/bin/env bash
# experiment=paper_claims, follow-up: transfer between the natural models of different seeds.
# Seed s's model is attacked with seed (s+1) mod 3's patterns, into <sweep>/transfer_natural/seed=s,
# so classwise-report groups the three as one configuration (claim 6 of claims.md).
# A transfer whose results.json already holds its `transfer` block is skipped (resumable).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SWEEP=${SWEEP:-outputs/sweeps/paper_claims}
SEEDS=(${SEEDS:-0 1 2})
n=${#SEEDS[@]}
for i in "${!SEEDS[@]}"; do
  a=${SEEDS[$i]} b=${SEEDS[$(( (i + 1) % n ))]}
  model="$SWEEP/claim=natural,seed=$a" patterns="$SWEEP/claim=natural,seed=$b" out="$SWEEP/transfer_natural/seed=$a"
  if [ -f "$out/results.json" ] && grep -q '"transfer"' "$out/results.json"; then echo "skip $out"; continue; fi
  for run in "$model" "$patterns"; do
    [ -f "$run/results.json" ] || { echo "paper_claims_transfer: $run has no results.json; run 'make claims' first" >&2; exit 1; }
  done
  echo "== seed $a's model, seed $b's patterns -> $out"
  # Quoted for Hydra: the sweep's folder names hold '=' and ',' (claim=natural,seed=0).
  "$BIN/classwise-search" "checkpoint='$model'" "patterns_from='$patterns'" seed="$a" \
    search.evaluation.max_per_class=100 search.evaluation.ci=0.05 logger=none "hydra.run.dir='$out'"
done
