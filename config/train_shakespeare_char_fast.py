# nanoGPT's tiny-Shakespeare result (val loss <= 1.47) in under half a minute on one GPU once
# torch.compile's cache is warm (a first run compiles ~30 s more). config/train_shakespeare_char.py's
# model, data and optimizer; what changes is the length: that recipe's validation loss is lowest near
# step 1,750 and rises after (the model learns the 1M characters by heart), so this one trains 1,500
# steps with the cosine decay fitted to them, and evaluates less often: val 1.4700 in 26 s on one H200 (docs/experiments.md).
#   python train.py config/train_shakespeare_char_fast.py && python sample.py --out_dir=out-shakespeare-char-fast

import os

exec(open(os.path.join(os.path.dirname(__file__), 'train_shakespeare_char.py')).read())  # the GPU recipe, then:

out_dir = 'out-shakespeare-char-fast'
max_iters = 1500
lr_decay_iters = 1500
eval_interval = 500
eval_iters = 100  # 100 x 64 x 256 tokens: the 111k-character validation text ~15 times over
