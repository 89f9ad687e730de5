# Masked-LM pretraining of a small encoder (BERT-style) on the 2,000 movie reviews (SST-2's dev sentences left out)
# for 45 minutes of a 2-core CPU, then config/finetune_sst2_cpu.py (15 minutes); why these values: docs/experiments.md.
# export.py converts the classic architecture: --pos_emb=learned --norm=layernorm --mlp=gelu --qk_norm=False --bias=True
out_dir = 'out-mlm-reviews-cpu'
dataset = 'movie_reviews'  # prepared on first use
model_type = 'encoder'
mask_prob = 0.3
pack_sentences = True
n_layer = 4
n_head = 4
n_embd = 128
pos_emb = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
bias = False
dropout = 0.0
block_size = 128
batch_size = 32
optimizer = 'muon'  # Muon for the hidden matrices, AdamW for embeddings, heads and gains
learning_rate = 1e-2
min_lr = 1e-3
weight_decay = 0.01
warmup_iters = 100
lr_schedule = 'linear'
max_iters = 1_000_000  # max_time decides
max_time = 45 * 60.0
eval_interval = 500
eval_iters = 10
log_interval = 50
device = 'cpu'
dtype = 'float32'  # measured faster than bfloat16 on this CPU
compile = False
