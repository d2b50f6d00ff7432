#!/bin/bash
cd /work/main
while kill -0 21907 2>/dev/null; do sleep 10; done
( time .venv/bin/basisnet bench accuracy ) > logs/bench_accuracy.log 2>&1
( time .venv/bin/basisnet bench compare ) > logs/bench_compare.log 2>&1
( time .venv/bin/basisnet bench compare --quick ) > logs/bench_compare_quick.log 2>&1
( time .venv/bin/basisnet bench accuracy --quick ) > logs/bench_accuracy_quick.log 2>&1
