# Validation loss of the released gpt2-xl (n_layer=48, n_head=25, n_embd=1600: 1558M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_xl.py
import os

exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-xl'
init_from = 'gpt2-xl'
