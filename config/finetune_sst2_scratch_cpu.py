# What pretraining buys: config/finetune_sst2_cpu.py's classifier from scratch, in the same total time (60 CPU minutes)
import os
exec(open(os.path.join(os.path.dirname(__file__), 'finetune_sst2_cpu.py')).read())  # the same data and schedule
out_dir = 'out-sst2-scratch-cpu'
init_from = 'scratch'
n_layer = 4  # the architecture config/mlm_reviews_cpu.py pretrains (a fine-tune takes it from that checkpoint)
n_head = 4
n_embd = 128
pos_emb = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
bias = False
block_size = 128
warmup_iters = 100
batch_size = 32  # this and no smoothing as measured; the pretrained recipe's 16 and 0.1 not yet measured from scratch
label_smoothing = 0.0
max_time = 60 * 60.0
