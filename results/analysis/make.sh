#!/bin/bash
# Remakes every figure and JSON under results/analysis/ (issue 13). Run from the repository root with the runs
# named below on disk: RUNS/digits (the quick start, `dcgan-features pretrain --config configs/digits.toml --out
# RUNS/digits`), RUNS/cifar10_seed3 (the default recipe's seed-3 run, `dcgan-features pretrain --config
# configs/cifar10.toml --seed 3 --set train.ema_decay=0.999 --out RUNS/cifar10_seed3`, whose G, D's and metrics are
# in results/cifar10_ema/seed3/) and RUNS/svhn_authors (`dcgan-features import-dcgan-code
# ../shared/pretrained/dcgan_code_svhn --out RUNS/svhn_authors`). Every analysis also takes a generator.pt file:
# results/analysis/*/generator.pt are the committed ones. CIFAR10 is a folder holding cifar-10-batches-py.
set -euo pipefail
RUNS=${RUNS:-/work/an_runs}; CIFAR10=${CIFAR10:-/work/data}; OUT=results/analysis
A="dcgan-features analyse"
for name in digits cifar10_seed3 svhn_authors; do
  $A samples "$RUNS/$name" --n 64 --seed 0 --out $OUT/$name/samples --force
  $A walk "$RUNS/$name" --rows 8 --steps 10 --seed 0 --out $OUT/$name/walk --force
done
$A arithmetic "$RUNS/digits" --samples $OUT/digits/samples --a 13,25,40 --b 27,42,63 --c 20,57,62 --out $OUT/digits/arithmetic --force
$A arithmetic "$RUNS/cifar10_seed3" --samples $OUT/cifar10_seed3/samples --a 2,40,49 --b 14,17,39 --c 5,6,34 --out $OUT/cifar10_seed3/arithmetic --force
$A arithmetic "$RUNS/svhn_authors" --samples $OUT/svhn_authors/samples --a 1,22,24 --b 18,36,48 --c 9,47,63 --out $OUT/svhn_authors/arithmetic --force
$A memorisation "$RUNS/digits" --n 500 --out $OUT/digits/memorisation --force
$A memorisation "$RUNS/cifar10_seed3" --data-root "$CIFAR10" --n 1000 --out $OUT/cifar10_seed3/memorisation --force
$A visualise "$RUNS/digits" --out $OUT/digits/visualise --force
$A visualise "$RUNS/cifar10_seed3" --data-root "$CIFAR10" --out $OUT/cifar10_seed3/visualise --force
# SVHN itself is not on this machine: the authors' D is shown CIFAR-10 test images (the transfer the report
# evaluates), and its memorisation check waits for SVHN's training images.
$A visualise "$RUNS/svhn_authors" --dataset cifar10 --data-root "$CIFAR10" --out $OUT/svhn_authors/visualise --force
$A run-page "$RUNS/digits" --results $OUT/digits/checks --out $OUT/digits/run_page --force
$A run-page "$RUNS/cifar10_seed3" --results results/ablations/cifar10 --out $OUT/cifar10_seed3/run_page --force
# t-SNE maps (issue 26): the default recipe's committed seed-0 D (no generator needed) and the authors' D, both on
# CIFAR-10 test images (the authors' D with batch-norm statistics from CIFAR-10's training images, as evaluated).
$A embedding results/cifar10_deep/seed0 --data-root "$CIFAR10" --per-class 100 --seed 0 --out $OUT/cifar10_deep_seed0/embedding --force
$A embedding "$RUNS/svhn_authors" --dataset cifar10 --data-root "$CIFAR10" --per-class 100 --seed 0 --out $OUT/svhn_authors/embedding --force
$A embedding "$RUNS/cifar10_seed3" --data-root "$CIFAR10" --per-class 100 --seed 0 --out $OUT/cifar10_seed3/embedding --force
