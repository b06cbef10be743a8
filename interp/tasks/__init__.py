"""Prompt sets: the PromptSet container and the task generators."""
from interp.tasks.prompts import PromptSet, prompts_for
from interp.tasks.ioi import ioi_examples
from interp.tasks.colored_objects import co_colour_ids, co_colours, colored_objects_examples
from interp.tasks.needle import (
    NEEDLES, Episode, Needle, find_span, needle_episode, needle_episodes, rouge1_recall,
)
from interp.tasks.mcq import (
    MCQSet, MCQuestion, load_mcq_jsonl, mcq_label_ids, mmlu_style_examples, symbol_binding_examples,
)
from interp.tasks.harmful import (
    BENIGN_CATEGORIES, FORMATS, HARMFUL_CATEGORIES, REFUSAL_KEYWORDS, Judge, Request, RuleJudge,
    Verdict, attack_success_rate, benign_requests, encode_requests, format_request,
    harmful_requests, judge, judge_all,
)

__all__ = [
    "PromptSet", "prompts_for", "ioi_examples",
    "colored_objects_examples", "co_colour_ids", "co_colours",
    "MCQSet", "MCQuestion", "symbol_binding_examples", "mmlu_style_examples",
    "load_mcq_jsonl", "mcq_label_ids",
    "Episode", "Needle", "NEEDLES", "needle_episode", "needle_episodes", "find_span", "rouge1_recall",
    "Request", "Verdict", "Judge", "RuleJudge", "harmful_requests", "benign_requests",
    "format_request", "encode_requests", "judge", "judge_all", "attack_success_rate",
    "HARMFUL_CATEGORIES", "BENIGN_CATEGORIES", "FORMATS", "REFUSAL_KEYWORDS",
]
