# eval_gpt2.py for gpt2-xl (48 layers, 25 heads, 1600 wide: 1558M): python train.py config/eval_gpt2_xl.py
import os
exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-xl'
init_from = 'gpt2-xl'
