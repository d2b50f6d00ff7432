#!/bin/bash
cd /work/main
while kill -0 21660 2>/dev/null; do sleep 10; done
for m in condconv msdnet ranet; do
  .venv/bin/basisnet train --config cifar10_$m --output runs/bench_cifar10/$m train.epochs=12 > logs/$m.log 2>&1
done
.venv/bin/basisnet train --config cifar10_static --output runs/bench_cifar10/static_w0.5_18ep train.epochs=18 model.kwargs.width=0.5 > logs/static18.log 2>&1
