# GPT-2 (124M) on OpenWebText, as nanoGPT: about 0.5M tokens per step, down to ~2.85 val loss
# in ~5 days on one node of 8 A100 40GB. Prepare the data first (python prepare/openwebtext.py), then
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# On one GPU the same command with --nproc_per_node=1 accumulates 40 micro-steps per step instead:
# the global batch, and so the training, is the same.

out_dir = 'out-gpt2'
wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

dataset = 'openwebtext'
# 12 sequences x 1024 tokens x 40 micro-steps (5 on each of 8 GPUs) = 491,520 tokens per step
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64: faster matmuls

# 600k steps x 0.5M tokens = 300B tokens
learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10

dtype = 'auto'  # bfloat16 on A100/H100
compile = True
