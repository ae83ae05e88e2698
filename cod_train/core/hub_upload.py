"""``push_to_hub=``: upload an export to the Hugging Face Hub with ``huggingface_hub``.

The hub and a token are checked before any work (offline: a ConfigError in about a second), and the upload is
one commit (``upload_folder``), so the repo gets the whole export or nothing of it.
"""

from __future__ import annotations

import re
from pathlib import Path

from cod_train.core import hub
from cod_train.core.errors import ConfigError, RunError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_hub_access(repo_id: str) -> None:
    """A valid repo id, a reachable hub and a token; a one-line ConfigError otherwise."""
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"push_to_hub={repo_id!r} is not a Hub repo id like 'org/name'")
    reason = hub.offline_reason()
    if reason:
        raise ConfigError(f"push_to_hub={repo_id}: the Hugging Face hub is unreachable ({reason}); nothing was "
                          "exported or uploaded. Export without push_to_hub and upload the directory later "
                          "(`hf upload`)")
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(f"push_to_hub={repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def upload(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` as one commit; the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload cod-train export")
    except (HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"push_to_hub={repo_id}: the upload failed ({first}); the export is complete in "
                       f"{folder}") from None
    return str(url)
