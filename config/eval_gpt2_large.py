# eval_gpt2.py for gpt2-large (36 layers, 20 heads, 1280 wide: 774M): python train.py config/eval_gpt2_large.py
import os
exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-large'
init_from = 'gpt2-large'
