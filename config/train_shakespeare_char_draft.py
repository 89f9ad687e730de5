# A draft for speculative decoding of the 6 x 384 character model (config/train_shakespeare_char.py), 4 minutes
# on one CPU core; then python sample.py --out_dir=out-shakespeare-char --draft=out-shakespeare-char-draft
# The 2-minute CPU recipe's norms and optimizer, a block as long as the model's (a draft must read what it reads),
# one layer and learned positions: more layers, width or rotary cost more than they add to the tokens kept.
out_dir = 'out-shakespeare-char-draft'
dataset = 'shakespeare_char'
device = 'cpu'
max_time = 240.0  # seconds of training; the learning rate decays over them
max_iters = 100000
eval_interval = 1000
log_interval = 25
block_size = 256
batch_size = 16  # 4,096 tokens a step, as the 2-minute recipe's 64 x 64
n_layer = 1
n_head = 4
n_embd = 128
pos_emb = 'learned'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True  # keeps Muon's high learning rate stable
optimizer = 'muon'
muon_momentum = 0.8
learning_rate = 1e-2
min_lr = 1e-3
lr_schedule = 'linear'
warmup_iters = 10
beta1 = 0.8
beta2 = 0.99
