# German -> English translation of Multi30k on one GPU. UNVERIFIED: this recipe has not been run
# (no GPU was available when it was written); the target is sacreBLEU >= 38 on test_2016_flickr.
#
#     python train.py config/train_multi30k.py
#     python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
#
# It scales up config/train_multi30k_cpu.py, whose model (3+3 blocks, 256 wide) reached test BLEU 18.4
# with its validation loss still falling (2.80, train 2.56) when its hour ran out after 5.3 epochs: on
# a CPU the number of sentence pairs seen is the limit. A GPU affords a wider model and ~6x more
# epochs; then Multi30k's small size (29k pairs) makes overfitting the limit, hence the strong
# regularisation below rather than more layers.

out_dir = 'out-multi30k'
dataset = 'multi30k'
model_type = 'seq2seq'
block_size = 64  # the longest Multi30k sentences have under 50 tokens

# The "base" Transformer's width with half its depth: 3 encoder + 3 decoder blocks, 512 wide, 8 heads
# (~25M parameters). Deeper stacks overfit 29k sentence pairs without gaining BLEU.
n_layer = 3
n_embd = 512
n_head = 8
dropout = 0.3  # more than the paper's 0.1: this dataset is ~150x smaller than WMT
label_smoothing = 0.1

# ~30 epochs of 29,000 pairs at 128 pairs per step (~1,800 target tokens).
batch_size = 128
learning_rate = 1e-3
min_lr = 5e-5
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
