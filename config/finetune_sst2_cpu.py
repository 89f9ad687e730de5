# Fine-tunes config/mlm_reviews_cpu.py's encoder on SST-2 sentiment in 15 minutes of a 2-core CPU (docs/experiments.md)
#   python sample.py --out_dir=out-sst2-cpu --start=FILE:data/sst2_phrases/val.txt --reference=data/sst2_phrases/val.labels.txt
out_dir = 'out-sst2-cpu'
init_from = 'out-mlm-reviews-cpu'  # the architecture comes from its checkpoint; the classification head starts fresh
dataset = 'sst2_phrases'  # prepared on first use
model_type = 'encoder'
pack_sentences = True  # several phrases a row, each read apart: 1.3-1.6x faster steps
dropout = 0.1
batch_size = 16  # measured better than 32
label_smoothing = 0.1  # +0.8 points over three paired runs
learning_rate = 1e-3  # 5e-4 measured 1.4 points lower
min_lr = 1e-4
weight_decay = 0.01
warmup_iters = 50
lr_schedule = 'linear'
max_iters = 1_000_000  # max_time decides
max_time = 15 * 60.0
eval_interval = 500
eval_iters = 10
log_interval = 50
device = 'cpu'
dtype = 'float32'
compile = False
