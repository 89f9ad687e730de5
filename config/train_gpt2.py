# GPT-2 (124M) on OpenWebText, as nanoGPT: ~0.5M tokens per step, down to ~2.85 val loss in ~5 days on 8 A100 40GB.
# python prepare/openwebtext.py, then: torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
out_dir = 'out-gpt2'
wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'
dataset = 'openwebtext'
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8  # 5 on each of 8 GPUs (40 on one): 12 x 1024 x 40 = 491,520 tokens per step
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64: faster matmuls
learning_rate = 6e-4
max_iters = 600000  # x 0.5M tokens = 300B tokens
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
