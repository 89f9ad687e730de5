# Validation loss of the released gpt2-large (n_layer=36, n_head=20, n_embd=1280: 774M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_large.py
import os

exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())  # the same evaluation as for gpt2
out_dir = 'out-eval-gpt2-large'
init_from = 'gpt2-large'
