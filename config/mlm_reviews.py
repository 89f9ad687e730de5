# GPU version of config/mlm_reviews_cpu.py: a bigger encoder (6 layers, 384 wide), bf16, compiled, 6,000 steps:
#   python train.py config/mlm_reviews.py && python train.py config/finetune_sst2.py
out_dir = 'out-mlm-reviews'
dataset = 'movie_reviews'  # prepared on first use
model_type = 'encoder'
mask_prob = 0.3
pack_sentences = True
n_layer = 6
n_head = 6
n_embd = 384
bias = True
dropout = 0.1
block_size = 128
batch_size = 128
learning_rate = 1e-3
min_lr = 1e-4
weight_decay = 0.01
warmup_iters = 500
lr_schedule = 'linear'
max_iters = 6000  # steps, not minutes: the same run on any GPU (1.7M tokens: ~60 passes over them)
lr_decay_iters = 6000
eval_interval = 1000
eval_iters = 20
log_interval = 100
dtype = 'bfloat16'
compile = True
