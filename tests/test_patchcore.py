import pytest
import torch

from adcourse.models.patchcore import greedy_coreset, locally_aware_features, nearest_neighbour_distances


def slow_greedy_coreset(features: torch.Tensor, size: int, first: int) -> list[int]:
    """The k-center greedy written from its definition: every step recomputes every row's distance
    to every chosen row and takes the farthest row."""
    chosen = [first]
    while len(chosen) < size:
        farthest, farthest_distance = None, -1.0
        for m in range(len(features)):
            if m in chosen:
                continue
            distance = min(float(torch.linalg.vector_norm(features[m] - features[c])) for c in chosen)
            if distance > farthest_distance:
                farthest, farthest_distance = m, distance
        chosen.append(farthest)
    return chosen


def covering_radius(features: torch.Tensor, indices: torch.Tensor) -> float:
    """The largest distance from a row to its nearest chosen row."""
    return torch.cdist(features, features[indices]).min(1).values.max().item()


def test_greedy_coreset_equals_the_definition_without_projection():
    features = torch.randn(60, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fast = greedy_coreset(features, 12, projection_dim=None, seed=3)
    assert fast.tolist() == slow_greedy_coreset(features, 12, first=int(fast[0]))
    # a projection to at least as many dimensions as there are is no projection
    assert torch.equal(greedy_coreset(features, 12, projection_dim=5, seed=3), fast)


def test_greedy_coreset_covers_the_data_far_better_than_a_random_subset():
    # 2-D points (a square and a few far outliers) in 256 dimensions: the coreset must reach all of them
    generator = torch.Generator().manual_seed(1)
    plane = torch.rand(2000, 2, generator=generator)
    plane[:20] += 5 * torch.randn(20, 2, generator=generator)
    embedding = torch.linalg.qr(torch.randn(256, 2, generator=generator)).Q  # orthonormal columns
    features = plane @ embedding.T
    coreset = greedy_coreset(features, 100, projection_dim=128, seed=0)
    assert coreset.dtype == torch.long and len(coreset) == 100 and len(set(coreset.tolist())) == 100
    random_subset = torch.randperm(len(features), generator=generator)[:100]
    assert covering_radius(features, coreset) < 0.5 * covering_radius(features, random_subset)
    assert torch.equal(coreset, greedy_coreset(features, 100, projection_dim=128, seed=0))  # seeded


def test_greedy_coreset_never_repeats_a_row_even_when_rows_repeat():
    features = torch.zeros(10, 3)
    features[0] = 1.0
    indices = greedy_coreset(features, 10, projection_dim=None)
    assert sorted(indices.tolist()) == list(range(10))


@pytest.mark.parametrize("size", [0, 11])
def test_greedy_coreset_refuses_a_size_outside_the_data(size):
    with pytest.raises(ValueError, match="between 1 and the number of rows \\(10\\)"):
        greedy_coreset(torch.rand(10, 3), size)


@pytest.mark.parametrize("chunk", [37, 10_000])
def test_nearest_neighbour_distances_equal_the_full_distance_matrix(chunk):
    generator = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(300, 16, generator=generator), torch.randn(500, 16, generator=generator)
    expected = torch.cdist(queries, bank).min(1).values
    torch.testing.assert_close(nearest_neighbour_distances(queries, bank, chunk=chunk), expected)


def test_nearest_neighbour_distances_refuse_mismatched_dimensions():
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 2\)"):
        nearest_neighbour_distances(torch.rand(4, 3), torch.rand(5, 2))


def test_locally_aware_features_average_each_neighbourhood_with_zero_padding():
    first = torch.arange(9.0).view(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    deeper = torch.tensor([7.0, -1.0]).view(1, 2, 1, 1)
    out = locally_aware_features([first, deeper], neighbourhood=3)
    # every window is divided by 9: a corner sums its 4 neighbours inside the map, an edge its 6
    by_hand = torch.tensor([[(0 + 1 + 3 + 4) / 9, (0 + 1 + 2 + 3 + 4 + 5) / 9, (1 + 2 + 4 + 5) / 9],
                            [(0 + 1 + 3 + 4 + 6 + 7) / 9, 4.0, (1 + 2 + 4 + 5 + 7 + 8) / 9],
                            [(3 + 4 + 6 + 7) / 9, (3 + 4 + 5 + 6 + 7 + 8) / 9, (4 + 5 + 7 + 8) / 9]])
    assert out.shape == (1, 3, 3, 3)
    torch.testing.assert_close(out[0, 0], by_hand)
    # the 1×1 map averaged with its zero padding is value/9, then spread over 3×3
    torch.testing.assert_close(out[0, 1:], torch.tensor([7.0, -1.0]).view(2, 1, 1).expand(2, 3, 3) / 9)


def test_locally_aware_features_bring_deeper_maps_to_the_first_resolution_bilinearly():
    first = torch.zeros(1, 1, 4, 4)
    deeper = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)
    out = locally_aware_features([first, deeper], neighbourhood=1)  # no averaging: only the up-sampling
    # output position i samples the 2×2 map at (i + 0.5) / 2 − 0.5, clamped to [0, 1]: 0, 0.25, 0.75, 1
    weight = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(out[0, 1], 8 * weight[:, None] + 4 * weight[None, :])


def test_locally_aware_features_refuse_an_even_neighbourhood():
    with pytest.raises(ValueError, match="odd"):
        locally_aware_features([torch.rand(1, 1, 4, 4)], neighbourhood=2)
