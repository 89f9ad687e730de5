# The lowest validation loss on tiny Shakespeare (characters) in about two minutes of a 2-core CPU,
# the budget given for nanoGPT's README CPU command (which reaches 1.88; 88-93 s on our machine):
#   python train.py config/train_shakespeare_char_cpu.py && python sample.py --out_dir=out-shakespeare-char-cpu
# What buys the loss, each measured at equal wall time (see docs/experiments.md):
# rotary positions + RMSNorm + ReLU^2, Muon at a high learning rate and low momentum, QK-norm (which keeps the
# high learning rate stable), and bf16 matmuls (with float32 attention) where the CPU has bf16 units.

out_dir = 'out-shakespeare-char-cpu'
dataset = 'shakespeare_char'
device = 'cpu'
compile = False  # on a CPU, compiling costs 20-40 s: more than ~12% faster steps win back in two minutes
dtype = 'auto'  # bf16 on a CPU with AVX512-BF16 or AMX (~2x faster matmuls), float32 on other CPUs (faster there)

max_time = 115.0  # seconds of training, evaluations included; the learning rate decays over it
max_iters = 100000  # the clock ends the run
eval_interval = 1000  # evaluations cost training time: at the start and the end only
eval_iters = 20
log_interval = 25
always_save_checkpoint = True

block_size = 64
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
pos_emb = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True

optimizer = 'muon'  # Muon for the hidden matrices, AdamW for embeddings and gains
muon_momentum = 0.8  # 0.95 measured 0.016 worse at 650 steps: a short run wants fresher updates
learning_rate = 1e-2
min_lr = 1e-3
lr_schedule = 'linear'  # measured 0.002-0.003 better than cosine at 650 steps (two seeds)
warmup_iters = 10  # 30 measured ~0.01 worse: a short run cannot spare steps at a low rate
weight_decay = 0.1
beta1 = 0.8  # AdamW's, for embeddings and gains: 0.005 better than 0.9 at 650 steps (two seeds)
beta2 = 0.99
