# GPU version of config/finetune_sst2_cpu.py: fine-tunes config/mlm_reviews.py's encoder on SST-2
# (GLUE's phrase-level train, dev = SST-2's 872 sentences), bf16, compiled, 5 minutes of one GPU.
# Run once, shortened, on an H200 shared with other runs (2026-11-26): 110 s of pretraining (2,757 steps,
# masked-LM val 3.78) and 60 s of fine-tuning (2,974 steps) gave 85.67% SST-2 dev; the full times are not measured.
# That was before the classifier's label smoothing (0.1, train.py's default since), untried on the GPU.
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
max_iters = 1_000_000  # max_time decides
max_time = 5 * 60.0
eval_interval = 500
eval_iters = 20
log_interval = 100
dtype = 'bfloat16'
compile = True
