"""data.augment "dihedral": each pair is turned/mirrored as one, every one of the eight views occurs,
and the draws follow the rank's generator (so a resumed run repeats them)."""

import pytest
import torch

from deblurdiff.training.augment import dihedral_pairs


def _views(image: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def test_both_images_of_a_pair_get_the_same_view_and_all_eight_occur():
    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(64, 3, 5, 5, generator=g)
    blurry = sharp * 0.5 + 0.25  # a pixel-wise function of sharp: aligned iff transformed alike
    out_sharp, out_blurry = dihedral_pairs(sharp, blurry, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out_blurry, out_sharp * 0.5 + 0.25)
    seen = set()
    for original, augmented in zip(sharp, out_sharp):
        matches = [i for i, v in enumerate(_views(original)) if torch.equal(v, augmented)]
        assert len(matches) == 1  # a random 5×5 image has eight distinct views
        seen.add(matches[0])
    assert seen == set(range(8))


def test_the_draws_follow_the_generator():
    sharp = torch.rand(8, 3, 4, 4)
    first = dihedral_pairs(sharp, sharp, torch.Generator().manual_seed(7))[0]
    again = dihedral_pairs(sharp, sharp, torch.Generator().manual_seed(7))[0]
    assert torch.equal(first, again)


def test_non_square_crops_are_refused():
    with pytest.raises(ValueError, match="square"):
        dihedral_pairs(torch.zeros(1, 3, 4, 6), torch.zeros(1, 3, 4, 6), torch.Generator())
