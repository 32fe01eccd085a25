"""Foreign formats: the authors' PyTorch checkpoints in, portable weights out.

- torch_pickle.py: `torch.save` files read without torch, containers and arrays only;
- keymaps.py: how each family's authors save their weights, and where each tensor goes;
- official.py: an authors' checkpoint as params, and imported as a run;
- download.py, pretrained.py: official weights by name, fetched once and verified;
- export.py: safetensors, ONNX and StableHLO.
"""
