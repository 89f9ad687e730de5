# eval_gpt2.py for gpt2-medium (24 layers, 16 heads, 1024 wide: 350M): python train.py config/eval_gpt2_medium.py
import os
exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-medium'
init_from = 'gpt2-medium'
