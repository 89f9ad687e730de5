# Validation loss of the released gpt2-large (n_layer=36, n_head=20, n_embd=1280: 774M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_large.py
out_dir = 'out-eval-gpt2-large'
dataset = 'openwebtext'
init_from = 'gpt2-large'
block_size = 1024
batch_size = 8
eval_iters = 500  # many batches, for a precise estimate
eval_only = True
wandb_log = False
dtype = 'auto'
