"""One package per adapter method; importing this package registers every method's config and tuner."""

from . import (
    adalora,  # noqa: F401
    adaption_prompt,  # noqa: F401
    ia3,  # noqa: F401
    lora,  # noqa: F401
    p_tuning,  # noqa: F401
    prefix_tuning,  # noqa: F401
    prompt_tuning,  # noqa: F401
)
