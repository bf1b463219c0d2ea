#!/usr/bin/env bash
# Re-runs of the committed MNIST sampler recipes for issue 29 (checkpoints to re-score).
# Code: a worktree at 08d9f5b (PYTHONPATH), so edits in /work/main don't reach the runs.
# One at a time, 1 thread, fixed run folders, auto_resume: the same script continues a cut-off queue.
cd /work/repro/wt
source /work/venv/bin/activate
export PYTHONPATH=/work/repro/wt/src
export GENLAB_DATA=/work/shared/datasets GENLAB_CACHE=/work/cache WANDB_MODE=disabled OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
R=/work/main/outputs/repro
while kill -0 2363 2>/dev/null; do sleep 20; done   # the first cgan job, started before the worktree
[ -f $R/cgan_mnist/checkpoints/last.ckpt ] && grep -q "max_epochs=20. reached\|Outputs\|written" $R/cgan_mnist.log && touch $R/cgan_mnist/DONE
run() {  # name, overrides...
  local name=$1; shift
  if [ -f "$R/$name/DONE" ]; then return; fi
  echo "$(date +%FT%T) start $name" >> /work/repro/queue.log
  python train.py "$@" logger=csv data.download=false test=false auto_resume=true \
      hydra.run.dir=$R/$name > $R/$name.log 2>&1 && touch $R/$name/DONE
  echo "$(date +%FT%T) end $name rc=$?" >> /work/repro/queue.log
}
mkdir -p $R
run cgan_mnist experiment=cgan_mnist
run vae_mnist experiment=vae_mnist
run cvae_mnist experiment=cvae_mnist
run glann_mnist experiment=glann_mnist
run rbm_pcd_decay experiment=rbm_mnist model.persistent=true model.lr_decay=true
run dbn_mnist experiment=dbn_mnist
run gumbel_vae_mnist experiment=gumbel_vae_mnist model.estimator=gumbel
run sngan_mnist_40ep experiment=sngan_mnist trainer.max_epochs=40
run dcgan_mnist experiment=dcgan_mnist
run ogan_mnist experiment=ogan_mnist trainer.max_epochs=10
run wgan_gp_mnist experiment=wgan_gp_mnist trainer.max_epochs=10
run ali_mnist experiment=ali_mnist trainer.max_epochs=10
run flow_matching_mnist experiment=flow_matching_mnist
run ddpm_mnist experiment=ddpm_mnist
echo "$(date +%FT%T) queue done" >> /work/repro/queue.log
