# The classifier of config/finetune_sst2_cpu.py trained from scratch, with no pretraining, for the
# same total time (60 minutes of a 2-core CPU): what the pretraining buys.
#   python train.py config/finetune_sst2_scratch_cpu.py
out_dir = 'out-sst2-scratch-cpu'
dataset = 'sst2_phrases'  # prepared on first use (in the movie reviews' vocabulary, like the fine-tuned one)
model_type = 'encoder'
n_layer = 4
n_head = 4
n_embd = 128
bias = True
dropout = 0.1
block_size = 128
batch_size = 32
learning_rate = 1e-3
min_lr = 1e-4
weight_decay = 0.01
warmup_iters = 100
lr_schedule = 'linear'
max_iters = 1_000_000  # max_time decides
max_time = 60 * 60.0
eval_interval = 500
eval_iters = 10
log_interval = 50
device = 'cpu'
dtype = 'float32'
compile = False
