"""Write small quantized checkpoints as users download them, for tests.

- GGUF (`save_gguf`): FLUX in the original BFL names, as city96's converter (ComfyUI-GGUF)
  writes it: matrices whose rows fit the quant block quantized with `gguf.quants.quantize`
  (Q8_0, Q4_0, Q5_0, ...), other matrices F16, vectors F32. Q4_K and other K-quants have no
  quantizer in gguf-py: those are written as raw blocks of zeros (`zero_blocks=True`, a valid
  file that dequantizes to zero) for header, inspect and plan tests.
- NF4 (`save_nf4`): diffusers names, every Linear weight quantized by bitsandbytes on CPU
  (`quantize_4bit`, nested statistics, as `BitsAndBytesConfig(bnb_4bit_quant_type="nf4",
  bnb_4bit_use_double_quant=True)` does), stored with `QuantState.as_dict(packed=True)`.
"""

from __future__ import annotations

from pathlib import Path


def save_gguf(state: dict, path, quant: str = "Q8_0", bfl: bool = True, zero_blocks=False,
              prefix: str = ""):
    import gguf
    import numpy as np
    from gguf.quants import quantize

    from tests.bfl_format import to_bfl

    tensors = to_bfl(state, prefix) if bfl else {prefix + k: v for k, v in state.items()}
    kind = gguf.GGMLQuantizationType[quant]
    block, type_size = gguf.GGML_QUANT_SIZES[kind]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, tensor in tensors.items():
        array = tensor.detach().float().numpy()
        if array.ndim == 2 and array.shape[1] % block == 0:
            if zero_blocks:
                packed = np.zeros((array.shape[0], array.shape[1] // block * type_size), np.uint8)
            else:
                packed = quantize(array, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
        elif array.ndim >= 2:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def nf4_state(model, blocksize: int = 64) -> dict:
    """The state dict of `model` with every Linear weight in bitsandbytes' packed NF4 form."""
    import bitsandbytes.functional as F
    import torch

    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    out = {}
    for name, tensor in model.state_dict().items():
        if name not in linear:
            out[name] = tensor.detach().to(torch.bfloat16).contiguous()
            continue
        packed, state = F.quantize_4bit(
            tensor.detach().to(torch.bfloat16), blocksize=blocksize, quant_type="nf4",
            compress_statistics=True,
        )
        out[name] = packed
        for key, value in state.as_dict(packed=True).items():
            out[f"{name}.{key}"] = value
    return out


def save_nf4(model, path, blocksize: int = 64):
    from safetensors.torch import save_file

    save_file(nf4_state(model, blocksize), str(path))
    return Path(path)
