"""Element-wise Adaptive Convolution (EAC). PROVISIONAL: reference implementation until the
custom op lands (issue 3)."""

from deblurdiff.ops.reference import eac_reference as eac

__all__ = ["eac", "eac_backend"]


def eac_backend(device) -> str:
    return "reference"
