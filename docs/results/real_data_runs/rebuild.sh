#!/bin/bash
# Rebuild the study JSONs and the figures from the kept runs (no training: every run is read back from
# runs.jsonl; about 1 min on 2 cores, mostly the theory values). The JSONs that the original commands left in
# runs/real_data_runs_{a,b,c} held only their last call's two (alpha, beta) points (0.5,0.1 and 0.7,0.7), so
# real_data_study.json in a_missing_mode/ etc. was written by these resume calls: all 8 points x 5 seeds,
# with the theory values (ideal_weights / ideal_s) of tools/real_data_study.py. Their config.wall_seconds is
# the rebuild's time, not the training's (see runs' "seconds" in runs.jsonl).
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
D=docs/results/real_data_runs
P="1,1;0.98,0.9408;0.94,0.94;0.94,0.9776;0.5,0.5;0.5,0.3;0.5,0.1;0.7,0.7"
C="--points $P --no-baselines --steps 800 --eval-every 200 --eval-samples 4000 --workers 1 --seeds 0,1,2,3,4"
/work/venv/bin/python tools/real_data_study.py $C --teacher-weights 1,1,0 --out $D/a_missing_mode
/work/venv/bin/python tools/real_data_study.py $C --teacher-weights 2,1,1 --out $D/b_wrong_weights
/work/venv/bin/python tools/real_data_study.py $C --teacher-weights 1,1,1 --teacher-shift 2:1.5,0 --out $D/c_moved_mode
# tables (docs/results/real_data_runs_tables.md, .json) and the two PNGs
/work/venv/bin/python tools/real_data_study.py --compare \
  a=$D/a_missing_mode/real_data_study.json,b=$D/b_wrong_weights/real_data_study.json,c=$D/c_moved_mode/real_data_study.json \
  --out docs/results
