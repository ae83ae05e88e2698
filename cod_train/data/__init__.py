"""Data pipeline: sources, tokenizers, packing, token shards, resumable loaders, the bundled sample.

Contract (docs/architecture.md, "Train data")::

    tok = build_tokenizer(cfg.data)                       # PreTrainedTokenizerFast, eos + pad set
    check_vocab(tok, model_vocab_size)                    # ConfigError if the ids do not fit the model
    train = build_train_data(cfg.data, tok, global_batch_size=G, dp_rank=r, dp_world=R, seed=s)
    batch = next(train)                                   # {"input_ids", "labels"}: LongTensor[G // R, seq_len]
    train.state_dict() / train.load_state_dict(state)     # exact resume; train.stats() -> bad-data counts
    evals = build_eval_data(cfg.data, tok, micro_batch_size=m, max_tokens=n, dp_rank=r, dp_world=R)  # or None

Sources (``data.source``): ``sample`` and ``files`` are tokenized once into token shards (cached by content
fingerprint) and read at random (:mod:`.loader`); ``shards`` reads a ``cod-data tokenize`` directory; ``c4``
streams (:mod:`.stream`). ``sample_path("alpaca")`` is the bundled instruction data for SFT.
"""

from cod_train.data.build import build_eval_data, build_train_data, local_corpus
from cod_train.data.common import DataStats, cache_root
from cod_train.data.sample import ensure_sample, sample_path
from cod_train.data.tokenizer import build_tokenizer, check_vocab

__all__ = [
    "DataStats",
    "build_eval_data",
    "build_tokenizer",
    "build_train_data",
    "cache_root",
    "check_vocab",
    "ensure_sample",
    "local_corpus",
    "sample_path",
]
