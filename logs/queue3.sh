#!/bin/bash
cd /work/main
while pgrep -f "cifar10_msdnet" >/dev/null; do sleep 10; done
.venv/bin/basisnet train --config cifar10_ranet --output runs/bench_cifar10/ranet train.epochs=12 > logs/ranet.log 2>&1
( time .venv/bin/basisnet bench accuracy ) > logs/bench_accuracy.log 2>&1
( time .venv/bin/basisnet bench compare ) > logs/bench_compare.log 2>&1
( time .venv/bin/basisnet bench compare --quick ) > logs/bench_compare_quick.log 2>&1
( time .venv/bin/basisnet bench accuracy --quick ) > logs/bench_accuracy_quick.log 2>&1
