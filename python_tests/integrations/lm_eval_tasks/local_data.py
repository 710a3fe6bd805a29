"""Loaders of the local test tasks (custom_dataset): JSONL files beside this one, read into
in-memory datasets, so that no dataset is downloaded and nothing is cached on disk."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    import datasets

    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def shakespeare_mc(**metadata):
    """metadata: the harness passes the model_args and the task's metadata; unused."""
    return _load("shakespeare_mc.jsonl")


def shakespeare_gen(**metadata):
    return _load("shakespeare_gen.jsonl")
