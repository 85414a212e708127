"""One package per adapter method; this is the one list of them (adapters_core/registry.py reads it).

Adding a method: its folder with a `spec.py` declaring `SPEC`, and one line below.
"""

from ..registry import register_method
from .adalora.spec import SPEC as ADALORA
from .adaption_prompt.spec import SPEC as ADAPTION_PROMPT
from .ia3.spec import SPEC as IA3
from .lora.spec import SPEC as LORA
from .p_tuning.spec import SPEC as P_TUNING
from .prefix_tuning.spec import SPEC as PREFIX_TUNING
from .prompt_tuning.spec import SPEC as PROMPT_TUNING

BUILTIN_METHODS = (LORA, ADALORA, IA3, PROMPT_TUNING, P_TUNING, PREFIX_TUNING, ADAPTION_PROMPT)

for _spec in BUILTIN_METHODS:
    register_method(_spec)
