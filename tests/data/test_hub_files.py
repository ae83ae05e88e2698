"""data=c4 from the hub: the file lists are resolved (probe + glob) once per process, not at every eval."""

import huggingface_hub
import pytest

from cod_train.config import ConfigError, DataConfig
from cod_train.core import hub
from cod_train.data import build_eval_data, build_tokenizer, build_train_data
from cod_train.data.sources import clear_hub_files_cache, hub_data_files

ROOT = "datasets/allenai/c4/en"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_hub_files_cache()
    yield
    clear_hub_files_cache()


@pytest.fixture()
def fake_hub(monkeypatch):
    """A reachable hub (counted probes) with 2 train and 2 validation C4 files (counted globs)."""
    calls = {"probes": [], "globs": []}

    class FakeHfFileSystem:
        def glob(self, pattern):
            calls["globs"].append(pattern)
            if not pattern.endswith("*.json.gz"):
                return []
            split = "validation" if "validation" in pattern else "train"
            return [f"{ROOT}/c4-{split}.{i:05d}-of-00002.json.gz" for i in (1, 0)]

    def probe(timeout_s=1.0):
        calls["probes"].append(timeout_s)
        return calls.get("down")

    monkeypatch.setattr(hub, "offline_reason", probe)
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeHfFileSystem)
    return calls


def test_eval_data_built_five_times_probes_and_globs_once(fake_hub, word_tokenizer_file):
    cfg = DataConfig(source="c4", tokenizer=str(word_tokenizer_file), seq_len=8)
    tok = build_tokenizer(cfg)
    want = [f"hf://{ROOT}/c4-validation.{i:05d}-of-00002.json.gz" for i in (0, 1)]
    for _ in range(5):  # the pre-training loop builds its eval data at every eval
        data = build_eval_data(cfg, tok, micro_batch_size=2, max_tokens=64, dp_rank=0, dp_world=1)
        assert data is not None and data.files == want
    assert len(fake_hub["probes"]) == 1
    assert fake_hub["globs"] == [f"{ROOT}/*validation*.json.gz"]
    for rank in range(2):  # the train split: resolved once more, then reused too
        loader = build_train_data(cfg, tok, global_batch_size=2, dp_rank=rank, dp_world=2, seed=0)
        assert loader.files == [f"hf://{ROOT}/c4-train.{i:05d}-of-00002.json.gz" for i in (0, 1)]
    assert len(fake_hub["probes"]) == 2 and len(fake_hub["globs"]) == 2


def test_cached_list_is_a_copy_and_a_failure_is_not_cached(fake_hub):
    cfg = DataConfig(source="c4")
    fake_hub["down"] = "no answer from huggingface.co:443 within 1.0s"
    with pytest.raises(ConfigError, match="unreachable"):
        hub_data_files(cfg, "train")
    fake_hub["down"] = None
    files = hub_data_files(cfg, "train")
    files.append("mutated by the caller")
    assert hub_data_files(cfg, "train") == [f"hf://{ROOT}/c4-train.{i:05d}-of-00002.json.gz" for i in (0, 1)]
    assert len(fake_hub["probes"]) == 2 and len(fake_hub["globs"]) == 1
    hub_data_files(DataConfig(source="c4", hub_config="realnewslike"), "train")  # another key: resolved anew
    assert len(fake_hub["probes"]) == 3


def test_ranks_other_than_0_take_rank_0s_file_lists_without_probing(monkeypatch):
    """runs.pretrain.share_hub_files on rank 1 of 2: the lists come from rank 0 (collective simulated)."""
    from cod_train.config import PretrainConfig
    from cod_train.core import hub
    from cod_train.data import sources
    from cod_train.engine import distributed
    from cod_train.engine.distributed import DistEnv
    from cod_train.runs.pretrain import share_hub_files

    sources.clear_hub_files_cache()
    cfg = PretrainConfig(data=DataConfig(source="c4"))
    lists = {"train": ["hf://datasets/allenai/c4/en/c4-train.00000-of-01024.json.gz"],
             "validation": ["hf://datasets/allenai/c4/en/c4-validation.00000-of-00008.json.gz"]}
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj, env: [("ok", lists), obj])
    monkeypatch.setattr(hub, "offline_reason", lambda *a: pytest.fail("rank 1 probed the hub"))
    share_hub_files(cfg, DistEnv(rank=1, world_size=2))
    assert sources.hub_data_files(cfg.data, "train") == lists["train"]
    assert sources.hub_data_files(cfg.data, "validation") == lists["validation"]
    sources.clear_hub_files_cache()
