#!/usr/bin/env bash
# Single-seed Fashion-MNIST tables on CPU (2 cores, about an hour): natural vs adversarial, the
# baselines, the four backdoor triggers with every detector, and transfer small_cnn <-> resnet18.
# A run whose results.json is complete is skipped, so an interrupted script resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/tables}
done_run() { [ -f "$1/results.json" ] && grep -q '"metrics"' "$1/results.json"; }
train() {
  local name=$1; shift
  if done_run "$OUT/$name"; then echo "skip $name"; return; fi
  echo "== $name: classwise-train $*"
  .venv/bin/classwise-train logger=none hydra.run.dir="$OUT/$name" "$@"
}
transfer() {
  local name=$1 model=$2 patterns=$3
  if [ -f "$OUT/$name/results.json" ] && grep -q '"transfer"' "$OUT/$name/results.json"; then echo "skip $name"; return; fi
  echo "== $name: classwise-search checkpoint=$OUT/$model patterns_from=$OUT/$patterns"
  .venv/bin/classwise-search checkpoint="$OUT/$model" patterns_from="$OUT/$patterns" search.evaluation.max_per_class=100 \
    hydra.run.dir="$OUT/$name"
}
# Natural and adversarial: every baseline, the whole eval split, PGD-20 robust accuracy for both.
train natural robust_eval=true detector=all
train adversarial setting=adversarial setting.adversary.method=fgsm_rs
# Backdoors: every detector; eval capped at 500 images per class.
for trigger in badnets blend trojan sig; do
  train "backdoor_$trigger" setting=backdoor trigger=$trigger detector=all \
    'search.pattern_ratios=[0.01,0.05]' search.evaluation.max_per_class=500 'search.baselines.methods=[random]'
done
# A second architecture for the transfer table (short schedule: ResNet-18 is slow on CPU).
train resnet18 model=resnet18 data.train_subset=3000 trainer.max_epochs=1 search=fast search.steps=100 \
  search.evaluation.max_per_class=100 'search.baselines.methods=[random]'
transfer transfer_small_cnn_to_resnet18 resnet18 natural
transfer transfer_resnet18_to_small_cnn natural resnet18
.venv/bin/classwise-report "$OUT"
