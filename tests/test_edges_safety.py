"""Nothing lost at the edges: resume writes where it is pointed, no non-finite exports, every full disk gives the one
line, folders of crashed runs are reusable, exports follow the umask, the fused skew KLs stay finite, and a
multi-process run reports a user error once."""

from __future__ import annotations

import pytest
import torch


# --- the fused skew KLs at extreme log-ratios -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["skl", "srkl"])
@pytest.mark.parametrize("alpha", [0.0, 1e-30, 0.1])
def test_fused_skew_kl_gradients_stay_finite_past_log_ratio_88(name, alpha):
    """At α = 0 the closed form's p/m (skl) or α·exp(log q − log m) (srkl) overflowed float32 once a log-ratio
    passed 88 while the row's value stayed finite, so the fallback never ran: NaN gradients."""
    from minillm_cli.losses import divergences as D
    from minillm_cli.losses.fused import value_and_grad

    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.zeros(3, 8), torch.zeros(3, 8)
    student[0, 0], teacher[0, 1] = 100.0, 100.0          # log q − log p ≈ ±100 on two entries
    student[1, 2], teacher[1, 2] = -95.0, 20.0
    student[2], teacher[2] = torch.randn(8, generator=generator), 3 * torch.randn(8, generator=generator)
    value, _, grad = value_and_grad(name, student.clone().requires_grad_(), teacher, alpha=alpha)
    exact_input = student.double().requires_grad_()
    exact = D.rows_divergence(name, exact_input, teacher.double(), alpha=alpha).sum()
    (exact_grad,) = torch.autograd.grad(exact, exact_input)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(float(value.detach()), float(exact.detach()), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=1e-6)
