"""A teacher that is a network you give: your own registered module (weights from a file) or a wrapped foreign one."""

from __future__ import annotations

from torch import nn

from realuid.components import register
from realuid.context import RunContext
from realuid.errors import UserError


@register("teacher")
class NetworkTeacher(nn.Module):
    """Frozen teacher f* = a network read as ``parameterization`` on the run's path, weights from a file.

    ``f*(x_t, t, c) = path.apply_network(network, x_t, t, c)``: realuid calls
    ``network(x_t, t, cond)`` with its own time (t = 0 data, t = 1 noise, the
    path's ``network_time``) and reads the output as ``parameterization``
    (velocity, x0, epsilon, score; VP also v). A network of another convention
    converts in its ``forward`` (e.g. ``return -inner(x, 1 - t)`` for a
    torchcfm-style velocity). ``weights`` is a state dict saved with
    ``torch.save(net.state_dict(), ...)`` (read with ``weights_only=True``) or
    ``safetensors.torch.save_file``; ``key`` picks it inside a ``.pt`` holding
    several (``'ema_model'``, ``'ema_models/0.999'``). A wrapper that loads its
    own weights (``DiffusersUNet``) needs none. A wrapper trained on one path may
    define ``check_path(path, where)``; it is called when the teacher attaches.

    Usage (recipe; ``my_net.py`` registers ``MyNet``, docs/BRING_YOUR_OWN.md)::

        DistillationTrainer.teacher = @NetworkTeacher()
        NetworkTeacher.network = @teacher/MyNet()
        NetworkTeacher.weights = 'my_teacher.safetensors'
        NetworkTeacher.parameterization = 'velocity'

    Args:
        network: the backbone (any registered network).
        parameterization: what the network predicts; None takes the trainer's.
        weights: the weights file (.pt / .pth / .ckpt / .safetensors); None when the network loads its own.
        key: where the state dict sits inside a .pt file holding a dict of them (``a/b``).
    """

    def __init__(self, network: nn.Module, parameterization: str | None = None, weights: str | None = None,
                 key: str | None = None):
        super().__init__()
        from realuid.models.importers import check_fits, read_weights_file, select_state_dict

        if not isinstance(network, nn.Module):
            raise UserError(f"NetworkTeacher.network must be a network (an nn.Module), got {network!r}",
                            "NetworkTeacher.network", "bind it to a registered network, e.g. @teacher/MyNet()")
        self.network, self.parameterization, self.weights, self.path = network, parameterization, weights, None
        where = f"NetworkTeacher.weights = {weights!r}"
        if weights is None:
            if not getattr(network, "loads_own_weights", False):
                raise UserError(f"NetworkTeacher has no weights for its {type(network).__name__}: an untrained "
                                "teacher would be distilled", "NetworkTeacher.weights",
                                "bind NetworkTeacher.weights to the trained state dict (.pt or .safetensors)")
            return
        state, _ = select_state_dict(read_weights_file(weights, where), key, where, "NetworkTeacher.key")
        check_fits(network, state, where, f"give the weights of this {type(network).__name__}, or bind the "
                   "architecture they were trained with")
        network.load_state_dict(state)

    def attach(self, context: RunContext) -> "NetworkTeacher":
        """Read the network on the run's path, in its own parameterisation (default: the trainer's)."""
        self.parameterization = self.parameterization or context.parameterization
        context.path.check_parameterization(self.parameterization, "NetworkTeacher.parameterization")
        check = getattr(self.network, "check_path", None)
        if callable(check):
            check(context.path, f"NetworkTeacher.network vs {context.where('path')}")
        self.path = context.path
        return self

    def forward(self, x_t, t, cond=None):
        return self.path.apply_network(self.network, x_t, t, cond, self.parameterization)
