# Validation loss of the released gpt2-xl (n_layer=48, n_head=25, n_embd=1600: 1558M parameters) on OpenWebText:
#   python train.py config/eval_gpt2_xl.py
out_dir = 'out-eval-gpt2-xl'
dataset = 'openwebtext'
init_from = 'gpt2-xl'
block_size = 1024
batch_size = 8
eval_iters = 500  # many batches, for a precise estimate
eval_only = True
wandb_log = False
dtype = 'auto'
