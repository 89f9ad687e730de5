# nanoGPT's tiny-Shakespeare result (val loss <= 1.47) in under 30 s on one GPU, torch.compile's cache warm: its recipe
# cut to 1,500 steps (its val loss is lowest near step 1,750, then rises), the decay fitted to them, fewer evaluations.
#   python train.py config/train_shakespeare_char_fast.py && python sample.py --out_dir=out-shakespeare-char-fast
import os
exec(open(os.path.join(os.path.dirname(__file__), 'train_shakespeare_char.py')).read())  # the GPU recipe, then:
out_dir = 'out-shakespeare-char-fast'
max_iters = 1500
lr_decay_iters = 1500
eval_interval = 500
eval_iters = 100  # 100 x 64 x 256 tokens: the 111k-character validation text ~15 times over
