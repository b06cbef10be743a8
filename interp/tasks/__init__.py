"""Prompt sets: the PromptSet container and the task generators."""
from interp.tasks.prompts import PromptSet, prompts_for
from interp.tasks.ioi import ioi_examples
from interp.tasks.colored_objects import co_colour_ids, co_colours, colored_objects_examples

__all__ = [
    "PromptSet", "prompts_for", "ioi_examples",
    "colored_objects_examples", "co_colour_ids", "co_colours",
]
