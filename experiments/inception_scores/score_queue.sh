#!/usr/bin/env bash
# Re-score each re-run recipe once its training is DONE (issue 29, point 7): Inception and
# classifier features, 2,000 samples vs the first 2,000 MNIST test images.
cd /work/main
source /work/venv/bin/activate
export GENLAB_DATA=/work/shared/datasets GENLAB_CACHE=/work/cache WANDB_MODE=disabled OMP_NUM_THREADS=1
R=/work/main/outputs/repro
OUT=/work/rescore/out
names="cgan_mnist vae_mnist cvae_mnist glann_mnist rbm_pcd_decay dbn_mnist gumbel_vae_mnist sngan_mnist_40ep dcgan_mnist ogan_mnist wgan_gp_mnist ali_mnist flow_matching_mnist ddpm_mnist"
while true; do
  left=0
  for n in $names; do
    [ -f $OUT/scores_$n.json ] && continue
    left=1
    if [ -f $R/$n/DONE ]; then
      echo "$(date +%FT%T) score $n" >> /work/rescore/queue.log
      python scripts/score_samples.py $R/$n --features classifier inception --n 2000 --out $OUT > /work/rescore/$n.log 2>&1
      echo "$(date +%FT%T) scored $n rc=$?" >> /work/rescore/queue.log
    fi
  done
  [ $left = 0 ] && break
  sleep 60
done
echo "$(date +%FT%T) all scored" >> /work/rescore/queue.log
