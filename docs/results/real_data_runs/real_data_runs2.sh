#!/bin/bash
# Copy of runs/real_data_runs2.sh, the exact commands of the study, with one change: the runs used
# runs/real_data_study_frozen.py, here tools/real_data_study.py. That frozen copy was taken on 2026-12-02
# at 20:02 UTC, before commit 6a0974e (20:13), and is NOT identical to tools/real_data_study.py at 6a0974e
# (nor at any commit): 6a0974e adds the --compare mode, a docstring paragraph on the teachers, the
# teacher_binds() helper (it yields the same bindings as the frozen inline code, recorded in each JSON
# config) and flatten(1) instead of reshape(len(x), -1) in mode_position (the same for 2-D samples).
# Training, measurement and the journal settings are the same: tools/real_data_study.py at f5985c2 run
# with these settings resumes all 40 runs of each teacher from runs.jsonl (see rebuild.sh).
# Outputs went to runs/real_data_runs_long_{a,b,c} (kept here in long_{a,b,c}/) and, for the two added
# points, runs/real_data_runs_{a,b,c} (appended to the runs.jsonl in a_missing_mode/ etc.).
# The "while kill -0 4466" line waited for the process of real_data_runs.sh on that machine; it is commented
# out here (pid 4466 means nothing elsewhere).
# second part, after runs/real_data_runs.sh: convergence check at 2000 steps (seed 0), then two more (alpha, beta) points
cd /work/main
export OMP_NUM_THREADS=1
# while kill -0 4466 2>/dev/null; do sleep 10; done
T=tools/real_data_study.py
L="--no-baselines --steps 2000 --eval-every 200 --eval-samples 4000 --workers 1 --seeds 0"
/work/venv/bin/python $T $L --points "0.5,0.3" --teacher-weights 1,1,0 --out runs/real_data_runs_long_a
/work/venv/bin/python $T $L --points "0.5,0.3;0.94,0.94" --teacher-weights 2,1,1 --out runs/real_data_runs_long_b
/work/venv/bin/python $T $L --points "0.98,0.9408;0.5,0.3" --teacher-weights 1,1,1 --teacher-shift 2:1.5,0 --out runs/real_data_runs_long_c
P="0.5,0.1;0.7,0.7"
C="--points $P --no-baselines --steps 800 --eval-every 200 --eval-samples 4000 --workers 1 --seeds 0,1,2,3,4"
/work/venv/bin/python $T $C --teacher-weights 1,1,0 --out runs/real_data_runs_a
/work/venv/bin/python $T $C --teacher-weights 2,1,1 --out runs/real_data_runs_b
/work/venv/bin/python $T $C --teacher-weights 1,1,1 --teacher-shift 2:1.5,0 --out runs/real_data_runs_c
echo ALLDONE2
