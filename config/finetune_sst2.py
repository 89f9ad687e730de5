# GPU version of config/finetune_sst2_cpu.py: fine-tunes config/mlm_reviews.py's encoder on SST-2
# (GLUE's phrase-level train, dev = SST-2's 872 sentences), bf16, compiled, 3,000 steps (~1.5 minutes
# of an H200). Measured 2026-11-27 after 4,000 of the pretraining's 6,000 steps: 84.29-84.98% (docs/experiments.md).
#   python train.py config/finetune_sst2.py
out_dir = 'out-sst2'
init_from = 'out-mlm-reviews'  # the architecture comes from its checkpoint
dataset = 'sst2_phrases'  # prepared on first use
model_type = 'encoder'
dropout = 0.1
batch_size = 64
learning_rate = 1e-4
min_lr = 1e-5
weight_decay = 0.01
warmup_iters = 200
lr_schedule = 'linear'
max_iters = 3000  # ~3 passes over the 67k phrases
lr_decay_iters = 3000
eval_interval = 500
eval_iters = 20
log_interval = 100
dtype = 'bfloat16'
compile = True
