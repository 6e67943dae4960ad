"""Model families (one sub-package each), the model base class, the registry look-ups and checkpoint folders.

Importing this package registers every family's variants and model types.
"""

from perceivers.models import hip, perceiver_ar, perceiver_io  # noqa: F401  (register the families)
from perceivers.models.base import PerceiverModel, check_finite_inputs
from perceivers.models.hub import from_pretrained, save_pretrained
from perceivers.models.registry import create_model, get_config, get_entry, list_models

__all__ = ["PerceiverModel", "check_finite_inputs", "create_model", "from_pretrained", "get_config", "get_entry", "list_models",
           "save_pretrained"]
