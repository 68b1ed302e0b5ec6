#!/bin/bash
# The default ReMiss attack on the aligned toy policy, killed with kill -9 after 60 s and rerun: logs the
# wall time, how many instructions were written before the kill, and whether they survived the resume.
# Usage: bash scripts/remiss_kill_resume.sh (after `headvec remiss train-toy`; runs/remiss/attacks/remiss must not exist)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=runs/remiss/logs
mkdir -p "$LOGS"
export OMP_NUM_THREADS=1
t0=$(date +%s)
.venv/bin/headvec remiss attack --no-progress > ${LOGS}/attack_remiss_1.log 2>&1 &
pid=$!
sleep 60
kill -9 $pid
t1=$(date +%s)
n1=$(wc -l < runs/remiss/attacks/remiss/suffixes.jsonl)
head -n "$n1" runs/remiss/attacks/remiss/suffixes.jsonl > ${LOGS}/suffixes_at_kill.jsonl
echo "killed (kill -9) after $((t1 - t0)) s with $n1 complete instructions written" > ${LOGS}/default_attack.txt
.venv/bin/headvec remiss attack --no-progress > ${LOGS}/attack_remiss_2.log 2>&1
t2=$(date +%s)
n2=$(wc -l < runs/remiss/attacks/remiss/suffixes.jsonl)
same=$(head -n "$n1" runs/remiss/attacks/remiss/suffixes.jsonl | cmp -s - ${LOGS}/suffixes_at_kill.jsonl && echo identical || echo DIFFERENT)
echo "resumed: $((t2 - t1)) s more, $n2 instructions in all; the first $n1 rows after resuming: $same; total wall $((t2 - t0)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >> ${LOGS}/default_attack.txt
