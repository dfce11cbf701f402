#!/bin/bash
# One-shot GPU check on a machine with CUDA and nothing else prepared: a smoke training in bf16 and in fp32
# (NCCL, Megatron local or TE spec), an export of the GPU checkpoint, then three MovieLens-1M SID-GR trainings
# sharing the GPU (checkpoint selection on 2,000 valid users) and their test metrics under both protocols.
#   bash scripts/gpu_check.sh [DATA]   (repo root; DATA: a prepared ml1m dir with sids_collab/ and sids_text/ and
#                                       valid_sample2000_seed0.parquet; default .gpu/data; wheels for packages the
#                                       machine lacks, e.g. megatron-core and gin-config, in .gpu/whl)
# $OUT (default /tmp/gpu_out) collects log.txt and results.tgz; STEPS, EVAL, TRAIN_S, TEST_S set the budget.
set -u
export PYTHONUNBUFFERED=1
O=${OUT:-/tmp/gpu_out}; mkdir -p "$O"
W=${W:-/tmp/g}; mkdir -p $W
exec > >(tee -a "$O/log.txt") 2>&1
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
STEPS=${STEPS:-1500}; TEST=${TEST:-test}; TRAIN_S=${TRAIN_S:-190}; TEST_S=${TEST_S:-100}; EVAL=${EVAL:-300}
D=$(realpath "${1:-.gpu/data}")

# --- setup: carried wheels + the repo as the sidgr package
if ls .gpu/whl/*.whl >/dev/null 2>&1 && ! python3 -c "import megatron.core" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
if ! python3 -c "import sidgr.training, sidgr.inference" 2>/dev/null; then  # not installed: run from the checkout
  [ -e sidgr/training ] || ln -s ../training sidgr/training
  [ -e sidgr/inference ] || ln -s ../inference sidgr/inference
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
S="python3 -m sidgr.cli"
nvidia-smi -L 2>&1 | head -2
python3 - <<'EOF'
import sys, importlib.util, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
import megatron.core; print("megatron-core", megatron.core.__version__)
for m in ("transformer_engine", "apex", "wandb", "faiss"):
    print(m, "importable" if importlib.util.find_spec(m) else "missing")
EOF
el setup done

# --- smoke: the same tiny training in bf16 and in fp32
smoke() {  # name extra-override env...
  local name=$1 extra=$2; shift 2
  env "$@" timeout 150 $S train --config configs/tiny_ci.gin "TrainerConfig.run_dir='$W/smoke_$name'" \
    TrainerConfig.train_steps=40 TrainerConfig.eval_interval=20 TrainerConfig.save_interval=20 \
    TrainerConfig.log_interval=10 DataConfig.max_items=20 DataConfig.global_batch_size=32 \
    "DataConfig.train_path='$D/train.parquet'" "DataConfig.valid_path='$D/valid_sample2000_seed0.parquet'" \
    "DataConfig.mapping_path='$D/sids_collab/sids.json'" $extra > $W/smoke_$name.log 2>&1
  echo "smoke $name rc=$?"; tail -3 $W/smoke_$name.log
}
smoke gpu_bf16 TrainerConfig.seed=7 A=1 & p1=$!
smoke gpu_fp32 ModelConfig.bf16_on_gpu=False A=1 & p2=$!
wait $p1 $p2
for n in gpu_bf16 gpu_fp32; do echo "== $n"; grep -h '"step"' $W/smoke_$n/metrics.jsonl 2>/dev/null | tail -4 | cut -c1-300; done
MODE=none
grep -q '"step": 40, "mean' $W/smoke_gpu_fp32/metrics.jsonl 2>/dev/null && MODE=fp32
grep -q '"step": 40, "mean' $W/smoke_gpu_bf16/metrics.jsonl 2>/dev/null && MODE=bf16
el "smoke done MODE=$MODE"
[ $MODE = none ] && { grep -h "Error" $W/smoke_gpu_*.log | tail -4; cd $W && tar czf "$O/results.tgz" --exclude=checkpoints . ; exit 0; }
# the GPU-trained checkpoint serves through the CPU engine
$S export --checkpoint $W/smoke_gpu_bf16 --out $W/smoke_engine > $W/smoke_export.log 2>&1; echo "export rc=$?"; tail -2 $W/smoke_export.log

# --- ML-1M SID-GR trainings (concurrent), selection on 2,000 valid users
train() {  # name sids history
  local name=$1 sids=$2 hist=$3 prec=""
  [ $MODE = fp32 ] && prec=ModelConfig.bf16_on_gpu=False
  timeout $TRAIN_S $S train --nproc 1 --config configs/ml1m.gin "TrainerConfig.run_dir='$W/$name'" \
    TrainerConfig.train_steps=$STEPS TrainerConfig.eval_interval=$EVAL TrainerConfig.save_interval=$EVAL TrainerConfig.wandb=\'disabled\' TrainerConfig.progress=False \
    TrainerConfig.select_best=True TrainerConfig.select_beam_width=128 \
    "ModelConfig.history='$hist'" "DataConfig.train_path='$D/train.parquet'" \
    "DataConfig.valid_path='$D/valid_sample2000_seed0.parquet'" "DataConfig.mapping_path='$D/$sids/sids.json'" $prec \
    > $W/$name.log 2>&1
  echo "train $name rc=$?"; tail -2 $W/$name.log
}
train collab_pxid sids_collab prefixn+id & p1=$!
train collab_codes sids_collab codes & p2=$!
train text_pxid sids_text prefixn+id & p3=$!
wait $p1 $p2 $p3
el trainings done

# --- test: best checkpoint by valid, read once, both protocols
test_run() {
  local name=$1 sids=$2 R=$W/$1
  $S export --checkpoint $R --out $R/engine > $R/test.log 2>&1 || { echo "export $name failed"; tail -2 $R/test.log; return; }
  $S retrieve --engine $R/engine --sequences $D/$TEST.parquet --k 50 --beam-width 256 --out $R/test_cand.parquet >> $R/test.log 2>&1
  $S evaluate --candidates $R/test_cand.parquet --targets $D/$TEST.parquet --items $D/items.parquet --out $R/test >> $R/test.log 2>&1
  $S retrieve --engine $R/engine --sequences $D/$TEST.parquet --k 50 --beam-width 256 --include-history --out $R/test_cand_gr.parquet >> $R/test.log 2>&1
  $S evaluate --candidates $R/test_cand_gr.parquet --targets $D/$TEST.parquet --items $D/items.parquet --out $R/test_gr --include-history >> $R/test.log 2>&1
  echo "test $name rc=$?"; tail -2 $R/test.log
}
export -f test_run
pids=""
for r in collab_pxid:sids_collab collab_codes:sids_collab text_pxid:sids_text; do
  timeout $TEST_S bash -c "S='$S' W=$W D=$D TEST=$TEST test_run ${r%%:*} ${r##*:}" & pids="$pids $!"
done
wait $pids
el tests done
for r in collab_pxid collab_codes text_pxid; do echo "== $r"; cat $W/$r/best.json 2>/dev/null | tr -d '\n '; echo
  grep -h '"valid' $W/$r/metrics.jsonl 2>/dev/null | tail -8 | cut -c1-400; head -30 $W/$r/test/metrics.md 2>/dev/null; done
cd $W && tar czf "$O/results.tgz" --exclude='checkpoints' --exclude='engine' --exclude='*.parquet' --exclude='selection/engines' . 2>/dev/null
el all done
