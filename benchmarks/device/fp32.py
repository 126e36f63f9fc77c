"""Undo the transport: the carried MiniLM weights are fp16 (the 64 MiB limit); write them back as fp32."""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

path = Path(sys.argv[1]) / "model.safetensors"
tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load_file(path).items()}
save_file(tensors, path, metadata={"format": "pt"})
print("fp32 weights:", path, sum(v.numel() for v in tensors.values()))
