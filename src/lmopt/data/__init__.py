"""Tasks (examples + metric + template + parser) and loaders for embedded and Hugging Face data."""

from .induction import load_induction_task
from .loaders import (
    REASONING_GYM_TASKS,
    TWEET_LABELS,
    available_tasks,
    load_gsm8k,
    load_hf_task,
    load_letter_task,
    load_reasoning_gym,
    load_task,
    load_tweets,
    parse_last_number,
    shakespeare_text,
)
from .multistep import Episode, MultiStepTask, NumberWalk, number_walk
from .task import Example, Splits, Task, exact_match, first_line

__all__ = ["Episode", "Example", "MultiStepTask", "NumberWalk", "Splits", "Task", "exact_match", "first_line",
           "REASONING_GYM_TASKS", "TWEET_LABELS", "available_tasks", "load_gsm8k", "load_hf_task",
           "load_induction_task", "load_letter_task", "load_reasoning_gym", "load_task", "load_tweets",
           "number_walk", "parse_last_number", "shakespeare_text"]
