#!/usr/bin/env bash
# Issue 29, point 7: re-run each committed MNIST sampler recipe (code at 08d9f5b via a worktree),
# then re-score it (code of /work/main) -- one job at a time, 2 threads, shortest first.
# Fixed run folders + auto_resume: starting this script again continues a cut-off queue.
source /work/venv/bin/activate
export GENLAB_DATA=/work/shared/datasets GENLAB_CACHE=/work/cache WANDB_MODE=disabled OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
R=/work/main/outputs/repro
OUT=/work/rescore/out
LOG=/work/repro/queue.log
job() {  # name, overrides...
  local name=$1; shift
  if [ ! -f "$R/$name/DONE" ]; then
    echo "$(date +%FT%T) start $name" >> $LOG
    (cd /work/repro/wt && PYTHONPATH=/work/repro/wt/src python train.py "$@" logger=csv data.download=false \
        test=false auto_resume=true hydra.run.dir=$R/$name > $R/$name.log 2>&1) && touch $R/$name/DONE
    echo "$(date +%FT%T) end $name" >> $LOG
  fi
  if [ -f "$R/$name/DONE" ] && [ ! -f $OUT/scores_$name.json ]; then
    echo "$(date +%FT%T) score $name" >> $LOG
    (cd /work/rescore/wt && PYTHONPATH=/work/rescore/wt/src python scripts/score_samples.py $R/$name --features classifier inception --n 2000 --out $OUT > /work/rescore/$name.log 2>&1)
    echo "$(date +%FT%T) scored $name rc=$?" >> $LOG
  fi
}
mkdir -p $R $OUT
job vae_mnist experiment=vae_mnist
job rbm_pcd_decay experiment=rbm_mnist model.persistent=true model.lr_decay=true
job dbn_mnist experiment=dbn_mnist
job cvae_mnist experiment=cvae_mnist
job glann_mnist experiment=glann_mnist
job dcgan_mnist experiment=dcgan_mnist
job gumbel_vae_mnist experiment=gumbel_vae_mnist model.estimator=gumbel
job ogan_mnist experiment=ogan_mnist trainer.max_epochs=10
job ali_mnist experiment=ali_mnist trainer.max_epochs=10
job flow_matching_mnist experiment=flow_matching_mnist
job wgan_gp_mnist experiment=wgan_gp_mnist trainer.max_epochs=10
job ddpm_mnist experiment=ddpm_mnist
job sngan_mnist_40ep experiment=sngan_mnist trainer.max_epochs=40
# the sample-count gap: the conditional GAN at the papers' 10,000 samples vs the whole test split
if [ ! -f /work/rescore/out10k/scores_cgan_mnist.json ]; then
  echo "$(date +%FT%T) score cgan_mnist n=10000" >> $LOG
  (cd /work/rescore/wt && PYTHONPATH=/work/rescore/wt/src python scripts/score_samples.py $R/cgan_mnist --features inception --n 10000 --out /work/rescore/out10k > /work/rescore/cgan_10k.log 2>&1)
fi
echo "$(date +%FT%T) queue done" >> $LOG
