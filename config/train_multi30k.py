# German -> English translation of Multi30k on one GPU. UNVERIFIED: this recipe has not been run
# (no GPU was available when it was written); the target is sacreBLEU >= 38 on test_2016_flickr.
#
#     python train.py config/train_multi30k.py
#     python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
#
# It scales up config/train_multi30k_cpu.py and keeps what won the CPU trials there (rotary
# positions, RMSNorm, ReLU^2, QK-norm and Muon: val loss 3.04 against 3.94 for the paper's
# architecture with AdamW at equal time). A GPU affords a wider model and ~30 epochs; then
# Multi30k's small size (29k pairs) makes overfitting the limit, hence the strong regularisation
# below rather than more layers.

out_dir = 'out-multi30k'
dataset = 'multi30k'
model_type = 'seq2seq'
block_size = 64  # the longest Multi30k sentences have under 50 tokens

# The "base" Transformer's width with half its depth: 3 encoder + 3 decoder blocks, 512 wide, 8 heads
# (26M parameters)
n_layer = 3
n_embd = 512
n_head = 8
bias = False
pos_emb = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
dropout = 0.3  # more than the paper's 0.1: this dataset is ~150x smaller than WMT
label_smoothing = 0.1

# ~30 epochs of 29,000 pairs at 128 pairs per step (~1,800 target tokens).
batch_size = 128
optimizer = 'muon'
learning_rate = 5e-3
min_lr = 2.5e-4
warmup_iters = 500
max_iters = 7000
lr_decay_iters = 7000
weight_decay = 0.1
beta2 = 0.98

# BLEU of greedy translations of the whole validation set (1,014 sentences) at each eval
eval_interval = 500
eval_iters = 20
log_interval = 50
bleu_sentences = 1014

dtype = 'bfloat16'
compile = True  # batches are padded to their longest sentence: expect a few recompiles early on
