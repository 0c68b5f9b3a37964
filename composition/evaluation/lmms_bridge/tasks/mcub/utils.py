"""The MCUB tasks' functions (lmms-eval loads this file by path): docs from a local MCUB file, scoring with
the studio's rules (``composition.evaluation.scoring``: the paper's first character, the letter rule).

Environment: ``MCUB_DATA``, ``MCUB_ANSWERS``, ``MCUB_DATA_ROOT`` for ``mcub`` (the released files as they
are: answers joined on id, media paths kept inside the root); ``MCUB_SYNTH_DATA`` for ``mcub_synth`` and
``mcub_synth_mc`` (default: the bundled examples' MCUB-synth-4 file).
"""
import os


def _fail(message):
    from composition.errors import CompositionError

    raise CompositionError(message)


def _docs(path, answers=None, root=None):
    import datasets

    from composition.evaluation import load_question_set

    items = load_question_set(path, answers=answers, data_root=root).items
    rows = [{"id": item.id, "question": item.question, "prompt": item.prompt, "answer": item.answer,
             "subset": item.subset, "inputs": [{"modality": m, "path": str(p)} for m, p in item.inputs]}
            for item in items]
    return datasets.Dataset.from_list(rows)


def default_synth_file():
    from composition.world_notes import EXAMPLES

    return EXAMPLES / "mcub" / "mcub-synth4.json"


def mcub_synth_docs(dataset):
    return _docs(os.environ.get("MCUB_SYNTH_DATA") or default_synth_file())


def mcub_docs(dataset):
    data = os.environ.get("MCUB_DATA")
    if not data:
        _fail("the mcub task reads the released MCUB file named by MCUB_DATA (e.g. data/test/MCUB-4.json), with "
              "MCUB_ANSWERS (MCUB-answer.json) and MCUB_DATA_ROOT (where its media paths resolve); set them first.")
    return _docs(data, os.environ.get("MCUB_ANSWERS") or None, os.environ.get("MCUB_DATA_ROOT") or None)


def doc_to_visual(doc):
    return [{"modality": x["modality"], "path": x["path"]} for x in doc["inputs"]]


def doc_to_question(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_prompt(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def doc_to_choice(doc):
    """Each option as the experts answer it: "ball (A)", "cone (B)", ..."""
    from composition.evaluation.vlmevalkit import split_options

    _, options = split_options(doc["question"])
    return [f"{name} ({letter})" for letter, name in options.items()]


def doc_to_target_index(doc):
    from composition.errors import CompositionError
    from composition.evaluation.scoring import LETTERS, score_answer

    letter = score_answer(doc["answer"])
    if letter not in LETTERS:
        raise CompositionError(f"item {doc.get('id')!r}: its gold answer {doc['answer']!r} is not an option letter "
                               f"({', '.join(LETTERS)}); the multiple-choice task needs one.")
    return LETTERS.index(letter)


def _score(rule_name, doc, results):
    from composition.evaluation.scoring import RULES

    return {"accuracy": float(RULES[rule_name].correct(results[0] if results else "", doc["answer"]))}


def process_letter(doc, results):
    return _score("letter", doc, results)


def process_first_char(doc, results):
    return _score("first-char", doc, results)
