# German -> English translation of Multi30k on one GPU: the model, optimizer and schedule of
# config/train_multi30k_cpu.py (test_2016_flickr sacreBLEU 39.95 after 7,127 steps on a CPU), run for
# a fixed number of steps instead of a fixed time. NOT YET RUN ON A GPU (none was available when it
# was written): on a GPU the attention runs in bf16 rather than float32, so expect small differences.
#
#     python train.py config/train_multi30k.py
#     python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
#
# The CPU run was still improving slowly when its hour ran out (val loss 1.66 -> 1.62 over the last
# 1,100 steps) while the train loss (0.90) had left the val loss behind: more steps of the same
# model buy little, which is why this recipe does not simply train longer or wider.
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
