# Validation loss of the released gpt2-medium (n_layer=24, n_head=16, n_embd=1024: 350M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_medium.py
out_dir = 'out-eval-gpt2-medium'
dataset = 'openwebtext'
init_from = 'gpt2-medium'
block_size = 1024
batch_size = 8
eval_iters = 500  # many batches, for a precise estimate
eval_only = True
wandb_log = False
dtype = 'auto'
