"""What every headvec estimator shares: the scikit-learn contract around a (large) model parameter.

Estimators subclass :class:`ModelEstimator` (a :class:`sklearn.base.BaseEstimator`): the constructor
only stores its keyword arguments, ``fit`` validates them (``_parameter_constraints``, checked by
scikit-learn's own validator, failures shown as one-line :class:`ParameterError`) and does the work, and
fitted state ends in ``_``. The ``model`` parameter is a :class:`~headvec.models.LoadedModel` or a name
that :func:`~headvec.models.load` understands; the model actually used is the fitted ``loaded_``, so the
parameter is never overwritten.

``sklearn.base.clone`` deep-copies every parameter, which would copy a whole network; a LoadedModel is
frozen (headvec reads and patches activations, never weights), so clones share it instead and copy
every other parameter.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from headvec.errors import HeadvecError
from headvec.models import LoadedModel, load

MODEL_CONSTRAINT: list[Any] = [LoadedModel, str, os.PathLike]


class ParameterError(HeadvecError, ValueError):
    """An estimator parameter outside what it accepts (raised by ``fit``, never by the constructor)."""


class NotFittedError(HeadvecError, SklearnNotFittedError):
    """A method that needs a fitted estimator was called before ``fit`` (or ``from_pretrained``)."""


class ModelEstimator(BaseEstimator):
    """Base class of the estimators built on a model's attention heads (SAV, MTV)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {"model": MODEL_CONSTRAINT}
    _fitted_attribute: ClassVar[str] = ""  # set by subclasses: present once fitted

    def __sklearn_clone__(self) -> ModelEstimator:
        params = self.get_params(deep=False)
        shared = {k: v for k, v in params.items() if isinstance(v, LoadedModel)}
        copied = {k: clone(v, safe=False) for k, v in params.items() if k not in shared}
        return type(self)(**shared, **copied)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, self._fitted_attribute)

    def _validate(self) -> None:
        """Check every parameter against ``_parameter_constraints``; one line naming the accepted values."""
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc).replace("\n", " ")) from None

    def _model(self) -> LoadedModel:
        """The LoadedModel the ``model`` parameter names (loaded once per name; never written back)."""
        if isinstance(self.model, LoadedModel):
            return self.model
        cached = getattr(self, "_loaded_cache", None)
        if cached is None or cached[0] != self.model:
            self._loaded_cache = (self.model, load(self.model))
        return self._loaded_cache[1]

    def _check_fitted(self, hint: str = "call fit() first") -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; {hint}")

    def _artifact_params(self) -> dict[str, Any]:
        """The parameters an artifact stores: all but the model (stored as its identity) and progress."""
        return {k: v for k, v in self.get_params(deep=False).items() if k not in ("model", "progress")}
