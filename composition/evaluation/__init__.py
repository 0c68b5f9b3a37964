"""Evaluation on MCUB-style benchmarks: the paper's released files and MCUB-synth.

One module per job:

- ``files``: reading the released layout unchanged (answers joined on id, paths kept inside a root);
- ``synth``: where MCUB-synth sets live (the one definition of their layout; ``training`` builds them);
- ``prompt``: the paper-fidelity prompt (the human turn verbatim, the original's labels);
- ``scoring``: the scoring rules (the paper's first character and VQA exact match, the studio's letter rule);
- ``runner``: ``evaluate`` (items and variants batched through the engine) and its results;
- ``predictions``: predictions files, their settings, and resuming a stopped run;
- ``tune``: the λ/μ search on validation items, reported on disjoint test items;
- ``distributed``: one process per GPU under torchrun (rank 0 writes what one process writes).

    from composition.evaluation import load_mcub, evaluate, RULES
    items = load_mcub("MCUB-4.json", answers="MCUB-answer.json", data_root="data")
    result = evaluate(cm, items, rule=RULES["first-char"], prompt="paper", config=PAPER_CONFIG)

The engine never imports this package; it uses the engine's batch entry.
"""
from .files import MODALITY_ALIASES, ROLE_ALIASES, McubFormatError, McubItem, QuestionSet, load_mcub, load_question_set
from .prompt import PAPER_MAX_NEW_TOKENS, PROMPT_MODES
from .runner import DEFAULT_CONFIG, PAPER_CONFIG, McubResult, Prediction, accuracy, evaluate
from .scoring import LETTERS, RULES, ScoringRule, score_answer
from .synth import ALL_FOUR, SYNTH3_SUBSETS, SYNTH_KINDS, SynthSetMissing, synth_build_command, synth_file_names, synth_sets

__all__ = [
    "ALL_FOUR", "DEFAULT_CONFIG", "LETTERS", "MODALITY_ALIASES", "PAPER_CONFIG", "PAPER_MAX_NEW_TOKENS", "PROMPT_MODES",
    "RULES", "ROLE_ALIASES", "SYNTH3_SUBSETS", "SYNTH_KINDS", "McubFormatError", "McubItem", "McubResult", "Prediction",
    "QuestionSet", "ScoringRule", "SynthSetMissing", "accuracy", "evaluate", "load_mcub", "load_question_set", "score_answer",
    "synth_build_command", "synth_file_names", "synth_sets",
]
