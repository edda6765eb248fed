"""The builtin objectives, registered through the same hook as third-party ones (one module per objective)."""

from ...hookspecs import hookimpl


@hookimpl
def register_objectives(register):
    from .distillm import DistiLLM
    from .gkd import GKD
    from .kd import KD
    from .minillm import MiniLLM
    from .rkl import RKL
    from .seqkd import SeqKD
    from .sft import SFT
    from .text_kd import TextKD
    from .tvd import TVD

    for objective in (SFT, KD, SeqKD, RKL, TVD, GKD, DistiLLM, MiniLLM, TextKD):
        register(objective)
