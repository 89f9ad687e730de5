# Multi30k German -> English on one GPU: config/train_multi30k_cpu.py's model, optimizer and schedule, for a fixed
# number of steps instead of a fixed time. Not yet run on a GPU (where attention runs in bf16, not float32).
#   python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
import os
exec(open(os.path.join(os.path.dirname(__file__), 'train_multi30k_cpu.py')).read())  # the CPU recipe, then:
out_dir = 'out-multi30k'
device = 'auto'  # the GPU
dtype = 'bfloat16'
compile = True  # batches are padded to their longest sentence: expect a few recompiles early on
max_time = 0.0  # no clock: the schedule follows the steps
max_iters = 8000  # ~8.8 epochs of 29,000 pairs at 32 pairs per step
lr_decay_iters = 8000
bleu_sentences = 1014  # the whole validation set at each eval
