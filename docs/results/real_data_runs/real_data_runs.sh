#!/bin/bash
# Copy of runs/real_data_runs.sh, the exact commands of the study, with one change: the runs used
# runs/real_data_study_frozen.py, here tools/real_data_study.py. That frozen copy was taken on 2026-12-02
# at 20:02 UTC, before commit 6a0974e (20:13), and is NOT identical to tools/real_data_study.py at 6a0974e
# (nor at any commit): 6a0974e adds the --compare mode, a docstring paragraph on the teachers, the
# teacher_binds() helper (it yields the same bindings as the frozen inline code, recorded in each JSON
# config) and flatten(1) instead of reshape(len(x), -1) in mode_position (the same for 2-D samples).
# Training, measurement and the journal settings are the same: tools/real_data_study.py at f5985c2 run
# with these settings resumes all 40 runs of each teacher from runs.jsonl (see rebuild.sh).
# Outputs went to runs/real_data_runs_{a,b,c}; their runs.jsonl are kept here in
# a_missing_mode/, b_wrong_weights/, c_moved_mode/.
# the training study of docs/results/real_data_runs.md: seeds 0-2 of every teacher first, then seeds 3-4
cd /work/main
export OMP_NUM_THREADS=1
P="1,1;0.98,0.9408;0.94,0.94;0.94,0.9776;0.5,0.5;0.5,0.3"
C="--points $P --no-baselines --steps 800 --eval-every 200 --eval-samples 4000 --workers 1"
for S in 0,1,2 0,1,2,3,4; do
  /work/venv/bin/python tools/real_data_study.py $C --seeds $S --teacher-weights 1,1,0 --out runs/real_data_runs_a
  /work/venv/bin/python tools/real_data_study.py $C --seeds $S --teacher-weights 2,1,1 --out runs/real_data_runs_b
  /work/venv/bin/python tools/real_data_study.py $C --seeds $S --teacher-weights 1,1,1 --teacher-shift 2:1.5,0 --out runs/real_data_runs_c
done
echo ALLDONE
