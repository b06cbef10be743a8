"""Prompt sets: the PromptSet container and the task generators."""
from interp.tasks.prompts import PromptSet, prompts_for
from interp.tasks.ioi import ioi_examples

__all__ = ["PromptSet", "prompts_for", "ioi_examples"]
