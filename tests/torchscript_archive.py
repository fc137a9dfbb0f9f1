"""OpenAI's CLIP checkpoints are TorchScript archives; tests write small ones with this."""

import torch


class _ScriptRoot(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state, path):
    """A TorchScript archive whose state_dict has the given names, like OpenAI's released .pt files."""
    root = _ScriptRoot()
    for name, value in state.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
