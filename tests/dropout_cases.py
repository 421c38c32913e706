"""The dropout tests' shared cases: dtypes, input shapes and layouts, the random ops against
their references, and bias_act_dropout's activations (every row of the activation table)."""

import torch

from fastreg._activations import TABLE

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "strided", "permuted", "channels_last"]
SHAPES = [(0, 3), (1,), (7,), (2, 3, 5, 7), (3, 1000), (4, 512)]  # 512: whole chunks per bias row
# bias_act_dropout's activations: every row of the activation table
TORCH_ACTS = {name: row.torch_function for name, row in TABLE.items()}
ACTS = list(TORCH_ACTS)


def inputs():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) != 4:
                continue
            if layout == "strided" and 0 in shape:
                continue
            yield shape, layout


# name -> f(impl, x, **extra) using the same explicit seed
RANDOM_OPS = {
    "dropout": lambda m, x, p: m.dropout(x, p, seed=17),
    "alpha_dropout": lambda m, x, p: m.alpha_dropout(x, p, True, seed=17),
    "dropout_add": lambda m, x, p: m.dropout_add(x, torch.cos(x.detach()), p, seed=17),
    "drop_path": lambda m, x, p: m.drop_path(x, p, True, seed=17),
    "drop_path_residual": lambda m, x, p: m.drop_path(x, p, True, residual=torch.cos(x.detach()), seed=17),
    "drop_path_noscale": lambda m, x, p: m.drop_path(x, p, True, scale_by_keep=False, seed=17),
}
