"""torch.compile for every command's `--compile`: the same modules and weights, compiled where one graph can serve
many calls. The eager path stays the reference; tests/test_compiled.py checks that both give the same losses,
gradients and greedy tokens.

- Blocks: each block's forward is compiled (the training step's forward and backward, scoring, the prefill). Thirty
  small graphs of one shape compile once and share inductor's kernel cache; shapes that vary (sequence lengths)
  recompile once, after which dynamo makes the changing sizes symbolic.
- Decoding: `model.decode_step`, one token per row over a static KV cache (model.KVCache), has the same shapes at
  every step, so one graph serves every length; `generate` uses it for each step after the prefill.
- LoRA dropout: the masks are drawn eagerly by a pre-hook on each block, from the same generators and in the same
  order as in eager mode (lora.keep_mask), and handed to the compiled block, so compiled and eager runs see the same
  masks (a random op inside the graph would use inductor's own generator).
"""
from __future__ import annotations

import torch

from support.files import UserError
from lora import LoRALinear, keep_mask
from model import Transformer


def draw_dropout_masks(block: torch.nn.Module, args: tuple) -> None:
    """Forward pre-hook: each LoRALinear of the block that drops (LoRALinear.drops) gets its mask for this call,
    the others None, so no mask is ever drawn inside a compiled graph."""
    x = args[0]  # (B, T, D): every target's input has the same batch and positions
    for module in block.modules():
        if isinstance(module, LoRALinear):
            module.keep = keep_mask((*x.shape[:-1], module.in_features), module.dropout, module.dropout_rows,
                                    x.device) if module.drops else None


COMPILE_HELP = ("torch.compile each block and the decoding step (compiled.py). Off by default: on a 2-core CPU the "
                "compilation takes minutes and the steps gain little (README: Speed and memory)")

# Graphs per code object before dynamo falls back to eager. All blocks share Block.forward's code, and a run needs one
# graph per kind of block (plain, LoRA, GARFA, LoRA + GARFA) x grad mode (training, the frozen blocks below the
# adapters, inference) x whether shapes are still static: more than dynamo's default of 8.
RECOMPILE_LIMIT = 64


def check_toolchain(device: torch.device) -> None:
    """Inductor writes C++ kernels on a CPU and Triton kernels on a GPU: without the compiler, say so in one line now
    rather than in a traceback at the first step."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise UserError("--compile on CUDA needs Triton (pip install triton); or run without --compile")
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler
        raise UserError(f"--compile on the CPU needs a C++ compiler ({e}); install g++ or set CXX, "
                        f"or run without --compile") from None


def compile_model(model: Transformer) -> Transformer:
    """Compile `model` in place (see the module docstring) and return it; a second call changes nothing. Adapters
    attached later are picked up: dynamo's guards see the new modules and compile their blocks again."""
    if getattr(model, "decode_step", None) is not None:
        return model
    check_toolchain(model.embed_tokens.weight.device)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in model.layers:
        block.forward = torch.compile(block.forward)
        block.register_forward_pre_hook(draw_dropout_masks)
    model.decode_step = torch.compile(model.forward)
    return model


def compile_seconds() -> float:
    """Seconds spent compiling so far in this process: dynamo's tracing with inductor's code generation, and the
    backward graphs, which are compiled on the first backward pass."""
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(compilation_time_metrics.get(key, [])) for key in ("_compile.compile_inner",
                                                                     "compile_fx.<locals>.bw_compiler"))


def compile_line() -> str:
    return f"compilation: {compile_seconds():.0f} s (first calls of each shape; not part of the step rates)"
