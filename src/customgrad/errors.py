"""The exception hierarchy: every error customgrad raises on purpose derives from `CustomgradError`.

Each subclass also inherits the matching builtin, so ``except ValueError`` keeps working for users
who do not know about customgrad's types. Messages name the thing, the rule broken, and the fix.
"""

from __future__ import annotations


class CustomgradError(Exception):
    """Base class of every error customgrad raises on purpose."""


class UsageError(ValueError, CustomgradError):
    """An argument (Python or command line) has a value customgrad cannot use."""


class FormulaError(ValueError, CustomgradError):
    """A formula string cannot be parsed, or uses a name or construct that is not allowed."""


class DeriveError(ValueError, CustomgradError):
    """A derivative cannot be derived or a declared gradient does not fit its function."""


class DataError(ValueError, CustomgradError):
    """Data for a fit is missing, malformed, or contains values that cannot be fitted."""


class FitError(RuntimeError, CustomgradError):
    """A fit cannot start or cannot continue (for example the model returned NaN)."""


class CheckError(RuntimeError, CustomgradError):
    """The check battery cannot run on what it was given (not a failed check: those go in the report)."""


class CacheWarning(UserWarning):
    """The disk cache cannot be used (for example its folder is read-only); work continues in memory."""


class BackendError(RuntimeError, CustomgradError):
    """A kernel backend cannot run here (no compiler, no Triton, wrong device) or cannot print a function."""


class GradientError(ValueError, CustomgradError):
    """A hand-written forward/backward pair (`customgrad.custom_gradient`) breaks one of its rules: a wrong
    number or shape of gradients, a gradient for a non-differentiable argument, a mutated input."""
