"""GPT-2 checkpoints by name: Hugging Face repo ids through `huggingface_hub`, keras-hub preset names through
keras-hub, so the caches, offline mode and credentials work as their users know them.

A Hugging Face id (`gpt2`, `openai-community/gpt2-medium`, `hf://org/name`) is fetched with
`huggingface_hub.snapshot_download`: its cache (`HF_HUB_CACHE`, by default `~/.cache/huggingface/hub`),
`HF_HUB_OFFLINE=1`, `HF_TOKEN`, `HF_ENDPOINT`, revisions and progress bars apply. Only what a GPT-2 load
reads is downloaded: config.json first (a repo of another architecture is refused before anything else), then the
tokenizer files and a PEFT adapter's adapter_config.json (a repo with an adapter is refused before its weights:
transformers with peft would apply it), then the model's safetensors weights (model.safetensors, or its index and
then the shards it names). A repo without safetensors is loaded from `pytorch_model.bin`, or its shards through
`pytorch_model.bin.index.json`, as transformers loads them: `torch.load(weights_only=True)`, no pickled code
(without torch installed, refused before they download).

Which names go to the Hub:
>>> hub_repo_id("hf://openai-community/gpt2"), hub_repo_id("distilgpt2")
('openai-community/gpt2', 'distilgpt2')
>>> hub_repo_id("runs/demo/model.keras") is None
True

Example (online, or with the repo in the cache):
>>> from tf_gpt2 import GPT2                                     # doctest: +SKIP
>>> model = GPT2.from_pretrained("gpt2")                         # doctest: +SKIP
>>> model = GPT2.from_pretrained("openai-community/gpt2",
...                              revision="607a30d783dfa663caf39e06633721c8d4cfcd7e")  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from typing import Any, Callable

from tf_gpt2.files import index_shards, read_json
from tf_gpt2.formats import KERAS_HUB_GPT2, MODEL_FILE_SUFFIXES, PEFT_ADAPTER_FILES
from tf_gpt2.tokenizer import OTHER_KINDS

# What a GPT-2 load reads from a repo (weights, their index, config, tokenizer files).
CONFIG = "config.json"
# The model's (its index's shards are fetched by the names it gives): not an adapter's weights, nor a variant
# (model.fp16.safetensors).
MODEL_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json"]
PICKLED = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
# The tokenizer files, of GPT-2's kind and of others (a checkpoint with another tokenizer is refused by them).
TOKENIZER = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", *OTHER_KINDS]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_repo_id(name: str) -> str | None:
    """The Hugging Face repo id that `name` spells (`org/name`, `name` or `hf://org/name`), else None (without
    hf://, a name ending as a model file or a JSON file does: it is a path)."""
    path_like = not name.startswith("hf://") and name.lower().endswith((*MODEL_FILE_SUFFIXES, ".json"))
    name = name.removeprefix("hf://")
    if _REPO_ID.fullmatch(name) and not path_like and ".." not in name:
        return name
    return None


def keras_hub_preset(name: str) -> bool:
    """Whether `name` is one of keras-hub's GPT-2 presets (gpt2_base_en, gpt2_medium_en, ...)."""
    if not re.fullmatch(r"gpt2_[a-z0-9_]+", name):
        return False
    from keras_hub.models import GPT2Backbone

    return name in GPT2Backbone.presets


# keras-hub's GPT-2 presets and the Hugging Face repos that hold the same OpenAI weights.
KERAS_HUB_TO_HF = {"gpt2_base_en": "gpt2", "gpt2_medium_en": "gpt2-medium", "gpt2_large_en": "gpt2-large",
                   "gpt2_extra_large_en": "gpt2-xl"}


def keras_hub_backbone(name: str) -> Any:
    """keras-hub's GPT2Backbone for the preset `name`: kagglehub downloads it from Kaggle on first use and caches it
    (`KAGGLEHUB_CACHE`, by default ~/.cache/kagglehub). A download that fails says so, and where else to load from."""
    from keras_hub.models import GPT2Backbone

    try:
        return GPT2Backbone.from_preset(name)
    except OSError as e:  # requests' ConnectionError and HTTPError (no network, no Kaggle access), a bad cache
        from kagglehub.config import get_cache_folder

        same = KERAS_HUB_TO_HF.get(name)
        instead = f"the Hugging Face name {same!r} (the same weights)" if same else "a Hugging Face name"
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ConnectionError(
            f"keras-hub preset {name!r} could not be loaded: keras-hub downloads it from Kaggle on first use "
            f"(cached in {get_cache_folder()}), and that failed ({reason}). Load it once with Kaggle access, or use "
            f"{instead} or a preset directory on disk") from e


def _matching(names, patterns: list[str]) -> list[str]:
    """The names (of a repo's top level) that one of `patterns` matches, as snapshot_download matches them."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(names, allow_patterns=patterns))


def _missing_shards(snapshot: str) -> list[str]:
    """The shards the snapshot's model.safetensors.index.json names and it lacks; none where there is no index or
    it cannot be read (the load says what is wrong with it)."""
    try:
        return [os.path.basename(path) for path in index_shards(snapshot, MODEL_SAFETENSORS[1])
                if not os.path.exists(path)]
    except (ValueError, OSError):
        return []


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> str:
    """The snapshot folder after `snapshot_download` of the repo's top-level files that `patterns` match. Offline, it
    is the cached one even where it lacks some of them (a cache filled by `hf download` with some of the files): what
    the load needs, it checks and names."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:  # (the top level only: a pattern's * matches "/" too, and checkpoint-500/model.safetensors is not the model)
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=["*/*"])
    except IncompleteSnapshotError as e:
        return e.snapshot_path


def _cached_listing(repo_id: str, commit: str) -> list[str]:
    """The top-level files of the repo at `commit` as the Hub listed them when the cache was filled (none where it
    holds no listing)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=commit) if "/" not in f.path]
    except CachedRepoTreeNotFoundError:
        return []


def _repo_files(repo_id: str, revision: str | None) -> list[str]:
    """The files of a repo on the Hub; none where it cannot be asked (down, unreachable: the cache was read)."""
    import httpx2  # (huggingface_hub's HTTP client)
    from huggingface_hub import list_repo_files
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return list_repo_files(repo_id, revision=revision)
    except (HfHubHTTPError, httpx2.TransportError):  # as snapshot_download, which then read the cache
        return []


def download(repo_id: str, revision: str | None = None,
             check_config: Callable[[dict, str], Any] | None = None,
             check_files: Callable[[set[str], str], Any] | None = None) -> str:
    """The local snapshot directory of a GPT-2 repo on the Hugging Face Hub (downloaded or from the cache).

    `check_config(config, source)` reads the repo's config.json before anything else, raising where it is not GPT-2's
    (a config without a model_type is read as GPT-2's, as a folder on disk is); `check_files(names, source)` reads
    the names of the snapshot's files (with its tokenizer files and a PEFT adapter's config) before any weights."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"Hugging Face repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    folder = repo_id.split("/")[0]  # `runs/dmeo` beside `runs/` is most likely a mistyped path: say so first
    typo = f"no such local path {repo_id!r} ({folder}/ exists), and " if os.path.isdir(folder) else ""
    try:
        config = read_json(hf_hub_download(repo_id, CONFIG, revision=revision))
        model_type = config.get("model_type")
        if model_type not in (None, "gpt2"):
            raise ValueError(f"{where} holds a {model_type!r} model, not GPT-2")
        if (registered := config.get("registered_name")) in KERAS_HUB_GPT2:
            raise ValueError(f"{where} is a keras-hub preset, not a transformers checkpoint: download it (`hf "
                             f"download {repo_id} --local-dir DIR`) and load DIR, or load keras-hub's name for it "
                             f"({', '.join(KERAS_HUB_TO_HF)})")
        if registered:
            raise ValueError(f"{where} holds a Keras model ({registered}), not GPT-2")
        if check_config:
            check_config(config, f"{where}'s {CONFIG}")
        # The small files first: a repo they refuse (an adapter's) is refused before gigabytes of weights.
        snapshot = _snapshot(repo_id, revision, [CONFIG, *TOKENIZER, PEFT_ADAPTER_FILES[0]])
        commit = os.path.basename(snapshot)  # (the revision resolved: the calls below ask the Hub nothing more)
        listed = _cached_listing(repo_id, commit)  # (offline, what the Hub listed when the cache was filled counts)
        if check_files:
            check_files({*os.listdir(snapshot), *listed}, where)
        if unfetched := [name for name in _matching(listed, TOKENIZER) if not os.path.lexists(os.path.join(snapshot,
                                                                                                            name))]:
            why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else f"{constants.ENDPOINT} cannot be reached"
            raise FileNotFoundError(
                f"{where}: its tokenizer files {', '.join(unfetched)} are not in the Hugging Face cache and {why}: a "
                f"load reads them to check that the tokenizer is GPT-2's; fetch them too (`hf download {repo_id} "
                f"{' '.join(unfetched)}`), or load it once online")
        snapshot = _snapshot(repo_id, commit, MODEL_SAFETENSORS)
        offline = constants.is_offline_mode()
        if shards := _missing_shards(snapshot):  # as transformers reads them: named by the index, whatever the names
            snapshot = _snapshot(repo_id, commit, [glob.escape(name) for name in shards])  # (names, not globs)
            if missing := _missing_shards(snapshot):
                raise FileNotFoundError(
                    f"{where}: its {MODEL_SAFETENSORS[1]} names shards "
                    + ("that are not in the Hugging Face cache, and HF_HUB_OFFLINE is set" if offline else
                       "the repo does not hold") + f": {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if not _matching(os.listdir(snapshot), MODEL_SAFETENSORS):
            if importlib.util.find_spec("torch") is not None:
                snapshot = _snapshot(repo_id, commit, PICKLED)
            elif _matching(os.listdir(snapshot), PICKLED) or not offline and _matching(
                    _repo_files(repo_id, commit), PICKLED):  # said before gigabytes it cannot read
                raise ImportError(f"{where} has no model.safetensors (nor its shards): its pickled weights "
                                  "(pytorch_model.bin or its shards) need torch to be read (pip install "
                                  "'tf_gpt2[torch]')")
        if not _matching(os.listdir(snapshot), MODEL_SAFETENSORS + PICKLED):  # (a cache holding its config.json alone)
            held = ", ".join(sorted(os.listdir(snapshot)))
            raise FileNotFoundError(
                f"{where}: no weights tf_gpt2 reads (model.safetensors, pytorch_model.bin or their shards) are in the "
                f"Hugging Face cache ({snapshot} holds {held}) "
                + (f"and HF_HUB_OFFLINE is set: load it once online, or `hf download {repo_id}`" if offline else
                   f"and the repo has none to download (TensorFlow's or Flax's weights alone are not read), or "
                   f"{constants.ENDPOINT} could not be reached"))
        return snapshot
    except RevisionNotFoundError:
        raise ValueError(f"{where}: no such revision (a branch, tag or commit of the repo)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{typo}no {where} on {constants.ENDPOINT} (a private or gated repo needs a token: "
                         "`hf auth login` or HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else f"{constants.ENDPOINT} cannot be reached"
        raise FileNotFoundError(f"{typo}{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
                                f"load it once online, or `hf download {repo_id}`") from None
    except EntryNotFoundError:
        raise ValueError(f"{where} has no {CONFIG}: not a transformers model") from None
