"""The cost model's coefficients (Note [Choosing a path] in ``_plan``): generated, do not edit.

Placeholder priors, not yet fitted.
"""

#: ``"op-path"``: weights of ``_plan.features`` (seconds per count).
COEFFICIENTS = {
    "valid-direct": (5e-11, 2e-10, 1e-9, 2e-5),
    "full-direct": (5e-11, 2e-10, 1e-9, 2e-5),
    "grad-direct": (5e-11, 2e-10, 1e-9, 2e-5),
    "valid-im2col": (1e-9, 2e-11, 1e-9, 3e-5),
    "full-im2col": (1e-9, 2e-11, 1e-9, 3e-5),
    "grad-im2col": (1e-9, 2e-11, 1e-9, 3e-5),
    "valid-fft": (5e-10, 5e-10, 1e-9, 1e-4),
    "full-fft": (5e-10, 5e-10, 1e-9, 1e-4),
    "grad-fft": (5e-10, 5e-10, 1e-9, 1e-4),
}
