"""Run under torchrun (1 process, gloo): what `num_items_in_batch` reaches the model under FSDP2 bf16-mixed."""

import torch

from cod_train.config import DistributedConfig, ModelConfig
from cod_train.engine.distributed import destroy_distributed, init_distributed
from cod_train.engine.parallelize import parallelize
from cod_train.model import build_model
from cod_train.train.loop import loss_divisor

dist_cfg = DistributedConfig(engine="fsdp")
env = init_distributed(dist_cfg, "cpu")
torch.manual_seed(0)
model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                vocab_size=64, max_position_embeddings=64), 64)
engine = parallelize(model, dist_cfg, env, optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
                     precision="bf16-mixed", micro_batch_size=2)
seen = []
engine.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["num_items_in_batch"]), with_kwargs=True)
ids = torch.randint(0, 64, (2, 16))
for items in (torch.tensor(6250.0), loss_divisor(6250, 1)):
    with engine.autocast():
        engine.model(input_ids=ids, labels=ids, shift_labels=ids, num_items_in_batch=items, use_cache=False)
print("SEEN", [float(x) for x in seen], [type(x).__name__ for x in seen], flush=True)
destroy_distributed()
