# Validation loss of the released gpt2 (n_layer=12, n_head=12, n_embd=768: 124M parameters) on OpenWebText
out_dir = 'out-eval-gpt2'
dataset = 'openwebtext'
init_from = 'gpt2'
block_size = 1024
batch_size = 8
eval_iters = 500  # many batches, for a precise estimate
eval_only = True
wandb_log = False
dtype = 'auto'
