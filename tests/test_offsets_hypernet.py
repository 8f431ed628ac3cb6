import torch

from ostaf.offsets import WeightOffsets


def literal_delta(module: WeightOffsets) -> torch.Tensor:
    """The authors' formulation step by step: outer product, column linear, row linear, transpose."""
    a = module.linear1(module.v)  # (in,)
    b = module.linear2(module.v)  # (out,)
    m0 = torch.outer(a, b)  # (in, out)
    m1 = module.linear_column(m0.T).T  # (in, out)
    m2 = module.linear_row(m1)  # (in, out)
    return m2.T  # (out, in)


def test_closed_form_equals_authors_formulation():
    torch.manual_seed(0)
    module = WeightOffsets(in_features=48, out_features=40)
    torch.testing.assert_close(module(), literal_delta(module), rtol=1e-5, atol=1e-5)


def test_shape_is_linear_weight_layout_and_rank_at_most_three():
    torch.manual_seed(1)
    delta = WeightOffsets(in_features=64, out_features=32)()
    assert delta.shape == (32, 64)
    singular = torch.linalg.svdvals(delta.detach())
    assert singular[2] > 1e-3 * singular[0]  # rank 3 with biases...
    assert singular[3] < 1e-5 * singular[0]  # ...and no more
    assert delta.abs().mean() > 0.01  # default init is not the identity (authors' behaviour)


def test_parameters_and_init_follow_e4t():
    module = WeightOffsets(in_features=8, out_features=6)
    names = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert names == {
        "v": (1,),
        "linear1.weight": (8, 1),
        "linear1.bias": (8,),
        "linear2.weight": (6, 1),
        "linear2.bias": (6,),
        "linear_column.weight": (8, 8),
        "linear_column.bias": (8,),
        "linear_row.weight": (6, 6),
        "linear_row.bias": (6,),
    }
    assert module.v.item() == 1.0


def test_zero_init_gives_zero_delta_that_still_learns():
    module = WeightOffsets(in_features=16, out_features=12, zero_init=True)
    delta = module()
    assert torch.count_nonzero(delta) == 0
    (delta * torch.randn_like(delta)).sum().backward()
    assert module.linear_row.weight.grad.abs().sum() > 0


def test_low_rank_form_is_the_same_closed_form_on_factored_matrices():
    torch.manual_seed(2)
    module = WeightOffsets(in_features=48, out_features=40, rank=4)
    torch.testing.assert_close(module(), literal_delta(module), rtol=1e-5, atol=1e-5)
    assert torch.linalg.matrix_rank(module.linear_row.weight.detach()) == 4


def test_low_rank_parameters_scale_with_the_rank_not_the_square():
    full, low = WeightOffsets(320, 320), WeightOffsets(320, 320, rank=16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(full) == 1 + 2 * (320 + 320) + 2 * (320 * 320 + 320)
    assert count(low) == 1 + 2 * (320 + 320) + 2 * (2 * 320 * 16 + 320)
    names = {n for n, _ in low.named_parameters()}
    assert {"linear_row.up", "linear_row.down", "linear_row.bias", "linear_column.up"} <= names


def test_low_rank_init_keeps_the_full_forms_scale():
    torch.manual_seed(3)
    full = torch.stack([WeightOffsets(256, 256).linear_row.weight.detach() for _ in range(4)]).std()
    low = torch.stack([WeightOffsets(256, 256, rank=16).linear_row.weight.detach() for _ in range(4)]).std()
    assert 0.8 < low / full < 1.25


def test_low_rank_zero_init_gives_zero_delta_that_still_learns():
    module = WeightOffsets(in_features=16, out_features=12, zero_init=True, rank=3)
    delta = module()
    assert torch.count_nonzero(delta) == 0
    (delta * torch.randn_like(delta)).sum().backward()
    assert module.linear_row.up.grad.abs().sum() > 0
