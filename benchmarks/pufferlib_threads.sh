#!/bin/bash
# PufferLib 3 at 1 and 2 torch threads, alternating, per bench setting and precision (20 s each)
cd "$(dirname "$0")/.."
out=benchmarks/results/pufferlib_threads_cpu.jsonl
: > $out
for setting in "4 1" "8 1" "4 2" "8 2"; do
  set -- $setting
  for prec in float32 bfloat16; do
    for th in 1 2; do
      "${PUFFERLIB_PYTHON:-/tmp/puffer/venv/bin/python}" benchmarks/pufferlib_mettagrid.py --maps $1 --epochs $2 --seconds 20 --precision $prec --threads $th 2>/dev/null | tail -1 >> $out
    done
  done
done
