# German -> English translation of Multi30k on a CPU, trained for 55 minutes (evaluations included).
#
#     python train.py config/train_multi30k_cpu.py
#     python sample.py --out_dir=out-multi30k-cpu --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
#
# Tuned on a 2-core machine shared with other jobs. Results and the runs behind these choices: see
# the comments below and config/train_multi30k.py (the GPU recipe, scaled up from this one).
import torch

# One thread. On a 2-core machine that other processes also use, PyTorch's two threads wait for each
# other at every operation: one thread measured 2-5x faster (59 vs 13 sentence pairs/s) there. On an
# otherwise idle machine two threads are about 1.7x faster: delete this line.
torch.set_num_threads(1)

out_dir = 'out-multi30k-cpu'
dataset = 'multi30k'  # prepared on first use: joint German+English BPE of 8000 tokens
model_type = 'seq2seq'
device = 'cpu'
compile = False
block_size = 64  # the longest Multi30k sentences have under 50 tokens

# The model: 3 encoder + 3 decoder blocks, 256 wide (7.6M parameters, 2M of them the shared embedding).
# In 3-minute trials 2+2 blocks reached a lower loss (4.72 vs 4.96 at 180 s) only because each step is
# cheaper; over the full hour the deeper model has time to use its capacity.
n_layer = 3
n_embd = 256
n_head = 4
dropout = 0.1  # Multi30k is small (29k pairs): a few epochs are enough to start overfitting
label_smoothing = 0.1

# Optimisation. At ~30 sentence pairs per second the hour holds only a few epochs, so a small batch
# (32 pairs, ~450 target tokens) gives the most optimizer steps (~2500).
batch_size = 32
learning_rate = 2e-3
min_lr = 1e-4
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.98  # the Transformer paper's value
max_iters = 1_000_000  # the clock stops the run, not this
max_time = 3300.0  # seconds of training and evaluation; the learning rate decays over this time

# Evaluation: loss on 10 batches per split and BLEU of greedy translations of 200 validation
# sentences, about every 5 minutes (each costs 10-30 s).
eval_interval = 300
eval_iters = 10
log_interval = 50
bleu_sentences = 200
