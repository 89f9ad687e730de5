# A draft model for speculative decoding of the 6 x 384 character model (config/train_shakespeare_char.py):
#   python train.py config/train_shakespeare_char_draft.py  # 4 minutes on one CPU core
#   python sample.py --out_dir=out-shakespeare-char --draft=out-shakespeare-char-draft
# The same characters; a block as long as the model's (256: a draft must read what the model reads); the 2-minute
# CPU recipe's optimizer and norms (config/train_shakespeare_char_cpu.py). One layer x 128 with learned positions:
# a draft pays when its step costs little against the model's, and a second layer, more width or rotary positions
# cost more than the tokens they add to those kept (docs/experiments.md).

out_dir = 'out-shakespeare-char-draft'
dataset = 'shakespeare_char'
device = 'cpu'
compile = False
dtype = 'auto'

max_time = 240.0  # seconds of training; the learning rate decays over them
max_iters = 100000
eval_interval = 1000
eval_iters = 20
log_interval = 25
always_save_checkpoint = True

block_size = 256
batch_size = 16  # 4,096 tokens a step, as the 2-minute recipe's 64 x 64
n_layer = 1
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
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
weight_decay = 0.1
beta1 = 0.8
beta2 = 0.99
