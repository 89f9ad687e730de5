# Validation loss of the released gpt2-medium (n_layer=24, n_head=16, n_embd=1024: 350M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_medium.py
import os

exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-medium'
init_from = 'gpt2-medium'
