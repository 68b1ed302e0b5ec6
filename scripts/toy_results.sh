#!/usr/bin/env bash
# Rerun every published result that uses the shipped toy model, writing into docs/ (and runs/ for
# intermediate files). Usage: bash scripts/toy_results.sh [eval sav mtv rm harness ccot feedback ic lsar remiss]  (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
hv=".venv/bin/headvec"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
parts=("${@:-eval sav mtv rm harness ccot feedback ic lsar remiss}")
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }

if want eval; then
  mkdir -p docs/toyworld
  $hv toyworld eval toy --n 400 --threads 1 --device cpu --out docs/toyworld/eval.json
  $hv toyworld diagnose toy --threads 1 --device cpu --out docs/toyworld/diagnosis.json
fi
if want sav; then
  $hv sav eval toy --task toy-color,toy-shape,toy-count,toy-match --out docs/sav/toy --threads 1 --device cpu
fi
if want mtv; then
  $hv mtv eval toy --task toy-icl --out runs/mtv-eval --scaling 1,2,5,10,25,100 --threads 1 --device cpu
  $hv mtv eval toy --task toy-icl --out runs/mtv-eval-first-word --scaling 1,2,5,10,25,100 \
    --match first-word --threads 1 --device cpu
  for f in head_map.png loss_curve.png; do cp "runs/mtv-eval/$f" docs/mtv/; done
  cp runs/mtv-eval/results.md docs/mtv/results_exact.md && cp runs/mtv-eval/scaling.png docs/mtv/scaling_exact.png
  cp runs/mtv-eval-first-word/results.md docs/mtv/results_first_word.md
  cp runs/mtv-eval-first-word/scaling.png docs/mtv/scaling_first_word.png
fi
if want rm; then
  rm -rf docs/rm/toy docs/rm/toy-debiased  # start fresh: pairs judged by other weights are refused, not reused
  $hv rm eval toy --out docs/rm/toy --n-fit 40 --n-test 400 --steps 600 --device cpu
  $hv rm eval toy --out docs/rm/toy-debiased --n-fit 40 --n-test 400 --steps 600 --debias \
    --methods activation_rm,sav_voting,icl_judge --device cpu
fi
if want harness; then
  .venv/bin/python -c 'from headvec.toyworld import export; export("runs/toy-prefs", 0, {"train": 40, "test": 300}, splits=("train", "test"), tasks=("preference",))'
  for lang in en xx yy zz; do
    data="runs/toy-prefs/vlrewardbench.test.$lang.jsonl"
    template=toyworld; [[ $lang == en ]] || template="toyworld-$lang"   # the judge prompt in the row's language
    $hv bench run vlrewardbench --rm judge:toy --template "$template" --data "$data" --out "runs/h-judge-$lang" --device cpu
    $hv bench run vlrewardbench --rm judge-score:toy --template "$template" --data "$data" --out "runs/h-score-$lang" --device cpu
  done
  $hv rm fit toy runs/toy-prefs/preference.train.en.jsonl --format toy --out runs/rm-toy-all --device cpu
  $hv bench run vlrewardbench --rm artifact:runs/rm-toy-all --data runs/toy-prefs/vlrewardbench.test.en.jsonl \
    --out runs/h-actrm-en --device cpu
fi
if want ccot; then
  $hv ccot eval toy --n 270 --answer-tokens 16 --methods direct,cot,ccot,ccot_gold,ccot_answer --threads 1 --device cpu \
    --work runs/ccot-toy --out docs/ccot --report docs/ccot.md
fi
if want ic; then  # internal consistency on the chain-of-thought questions (docs/internal-consistency.md)
  $hv ic eval toy --n 250 --paths 20 --languages en,xx,yy,zz --out docs/ic --threads 1 --device cpu
fi
if want lsar; then  # LSAR vs none/demean/LIR (docs/lsar.md)
  $hv lsar eval toy --out docs/lsar/toy --threads 1 --device cpu
  $hv lsar eval minilm --out docs/lsar/minilm --threads 1 --device cpu
fi
if want feedback; then
  # VLFeedback + DPO on the toy model (docs/feedback-dpo.md): the default loop, then the annotator comparison
  rm -rf runs/feedback-default  # start fresh: a rerun into an existing directory reuses its finished stages
  $hv feedback run runs/feedback-default --threads 1
  $hv feedback compare runs/feedback-default --threads 1
  $hv feedback compare runs/feedback-default --dpo-seed 1 --conditions oracle,random-labels --threads 1
  mkdir -p docs/feedback
  cp runs/feedback-default/{report.json,comparison.json,comparison.md,comparison.png} docs/feedback/
  cp runs/feedback-default/{comparison-seed1.json,comparison-seed1.md} docs/feedback/
fi
if want remiss; then  # ReGap / ReMiss on the aligned toy policy (docs/reward-misspecification.md)
  rm -rf runs/remiss  # start fresh: reruns into an existing directory resume its finished stages
  $hv remiss train-toy --no-progress
  $hv remiss check-policies
  bash scripts/remiss_kill_resume.sh  # the default attack, killed with -9 after 60 s and resumed (timed)
  for method in remiss advprompter gcg random; do
    $hv remiss attack --method "$method" --no-progress
    $hv remiss eval --method "$method" --no-progress
  done
  $hv remiss backdoor --control runs/remiss/aligned/dpo/model
  mkdir -p docs/remiss
  cp runs/remiss/{backdoor.json,policies.json} runs/remiss/logs/default_attack.txt docs/remiss/
  $hv regap score runs/remiss/aligned/dpo/model toy --out docs/remiss/regap_test.jsonl
  $hv regap score runs/remiss/aligned/dpo/model toy --score reweighted --policy-weight 150 \
    --out docs/remiss/regap_test_official.jsonl
  $hv remiss attack --score reweighted --policy-weight 150 --out runs/remiss/attacks-official --no-progress
  $hv remiss eval --score reweighted --policy-weight 150 --out runs/remiss/attacks-official --no-progress
  $hv remiss report --out docs/remiss
  $hv remiss report --runs runs/remiss/attacks-official --out docs/remiss/official
  $hv remiss attack --readability 0 --out runs/remiss/attacks-noread --no-progress
  $hv remiss eval --readability 0 --out runs/remiss/attacks-noread --no-progress
  $hv remiss report --runs runs/remiss/attacks-noread --out docs/remiss/no-readability
  for method in remiss advprompter gcg random; do  # a larger search budget: 8 tokens x 16 candidates
    $hv remiss attack --method "$method" --suffix-tokens 8 --top-k 16 --out runs/remiss/attacks-s8k16 --no-progress
    $hv remiss eval --method "$method" --suffix-tokens 8 --top-k 16 --out runs/remiss/attacks-s8k16 --no-progress
  done
  $hv remiss report --runs runs/remiss/attacks-s8k16 --out docs/remiss/s8k16
fi
