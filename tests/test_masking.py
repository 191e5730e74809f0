"""Tests for d2v_mini.masking: masks mean what the paper and the released code say they mean."""
import pytest
import torch
from einops import rearrange

from d2v_mini.masking import TextMask, block_mask, check_mask, mask_ratio, span_mask, text_mask


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of True in a 1-D list; end is exclusive."""
    out, start = [], None
    for t, v in enumerate(row + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            out.append((start, t))
            start = None
    return out


def components(grid: list[list[bool]]) -> list[int]:
    """Sizes of the 4-connected components of True cells of a 2-D grid."""
    H, W, seen, sizes = len(grid), len(grid[0]), set(), []
    for i in range(H):
        for j in range(W):
            if grid[i][j] and (i, j) not in seen:
                stack, size = [(i, j)], 0
                seen.add((i, j))
                while stack:
                    a, b = stack.pop()
                    size += 1
                    for x, y in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= x < H and 0 <= y < W and grid[x][y] and (x, y) not in seen:
                            seen.add((x, y))
                            stack.append((x, y))
                sizes.append(size)
    return sizes


def boundary_edges(m: torch.Tensor) -> torch.Tensor:
    """Number of neighbouring (masked, visible) patch pairs per image. m: bool [B, H, W] -> long [B]."""
    return (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))


# ----------------------------------------------------------------------------- check_mask / mask_ratio
def test_check_mask_accepts_bool_and_returns_it():
    m = torch.zeros(2, 5, dtype=torch.bool)
    assert check_mask(m) is m
    assert check_mask(m, (2, 5)) is m


def test_check_mask_rejects_integer_masks_with_a_clear_message():
    with pytest.raises(TypeError, match="bool") as err:
        check_mask(torch.zeros(2, 5, dtype=torch.long))
    assert "torch.int64" in str(err.value) and "True = masked" in str(err.value)
    with pytest.raises(TypeError, match="bool"):
        check_mask([[True, False]])


def test_check_mask_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="2-D"):
        check_mask(torch.zeros(2, 5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 6\)"):
        check_mask(torch.zeros(2, 5, dtype=torch.bool), (2, 6), name="mask")


def test_mask_ratio_counts_only_valid_positions():
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
    assert torch.allclose(mask_ratio(mask), torch.tensor([0.5, 0.25]))
    assert torch.allclose(mask_ratio(mask, pad), torch.tensor([0.5, 0.5]))


# ----------------------------------------------------------------------------- span_mask (speech)
def test_span_mask_ratio_is_about_49_percent():
    m = span_mask((1000, 500), require_same_masks=False, generator=gen(0))
    assert m.dtype == torch.bool and m.shape == (1000, 500)
    ratio = mask_ratio(m).mean().item()
    assert 0.46 <= ratio <= 0.52, ratio  # paper: "~49% of all time-steps masked"


def test_span_mask_same_count_in_every_row():
    for seed in range(20):
        m = span_mask((8, 500), generator=gen(seed))
        counts = m.sum(-1)
        assert (counts == counts[0]).all()
        assert 0.35 <= counts[0].item() / 500 <= 0.55  # the batch minimum is a bit under 49%


def test_span_mask_is_made_of_runs_of_at_least_length_frames():
    m = span_mask((200, 500), length=10, require_same_masks=False, generator=gen(1))
    for row in m.tolist():
        lengths = [e - s for s, e in runs(row)]
        assert lengths and min(lengths) >= 10  # union of overlapping spans of 10: never shorter
    # fairseq draws starts from [0, T - length), so the very last frame is never masked
    assert not m[:, -1].any()


def test_span_mask_never_masks_padding_and_ratio_is_on_the_valid_part():
    B, T = 64, 400
    lengths = torch.randint(100, T + 1, (B,), generator=gen(2))
    pad = rearrange(torch.arange(T), "t -> 1 t") >= rearrange(lengths, "b -> b 1")  # right padding
    pad[0] = torch.arange(T) < 150  # one left-padded row too
    m = span_mask((B, T), padding_mask=pad, require_same_masks=False, generator=gen(3))
    assert not (m & pad).any()
    assert 0.44 <= mask_ratio(m, pad).mean().item() <= 0.54
    same = span_mask((B, T), padding_mask=pad, generator=gen(3))
    assert not (same & pad).any()
    assert (same.sum(-1) == same.sum(-1)[0]).all()
    with pytest.raises(TypeError, match="bool"):
        span_mask((B, T), padding_mask=pad.long())


def test_span_mask_short_rows_still_get_a_mask():
    m = span_mask((4, 8), prob=0.65, length=10, require_same_masks=False, generator=gen(4))
    counts = m.sum(-1)
    assert (counts >= 1).all() and (counts <= 8).all()  # min_masks = 1, spans cut at the row end


def test_span_mask_is_deterministic_given_a_seed():
    a = span_mask((4, 300), generator=gen(5))
    b = span_mask((4, 300), generator=gen(5))
    c = span_mask((4, 300), generator=gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert span_mask((2, 50), generator=gen(5), device="cpu").device.type == "cpu"


# ----------------------------------------------------------------------------- block_mask (vision)
def test_block_mask_masks_120_of_196_patches():
    m = block_mask(200, (14, 14), generator=gen(0))
    assert m.dtype == torch.bool and m.shape == (200, 196)
    counts = m.sum(-1)
    assert (counts <= 120).all()
    assert counts.float().mean().item() >= 118
    assert (counts == 120).float().mean().item() >= 0.5  # BEiT's generator hits 120 exactly ~70% of the time


def test_block_mask_is_blocky_not_scattered():
    m = rearrange(block_mask(200, (14, 14), generator=gen(1)), "b (h w) -> b h w", h=14)
    scattered = rearrange(torch.rand(200, 196, generator=gen(1)).argsort(-1) < 120, "b (h w) -> b h w", h=14)
    # a random 120/196 mask has ~174 masked/visible neighbour pairs; rectangles have far fewer
    assert boundary_edges(m).float().mean() < 0.5 * boundary_edges(scattered).float().mean()


def test_block_mask_regions_are_blocks_of_at_least_min_block():
    # at a low count the blocks do not merge into one region, so component sizes are informative
    m = rearrange(block_mask(200, (14, 14), num_patches=48, min_block=16, generator=gen(2)),
                  "b (h w) -> b h w", h=14)
    sizes = [s for grid in m.tolist() for s in components(grid)]
    in_big = sum(s for s in sizes if s >= 16) / sum(sizes)
    assert in_big >= 0.85, in_big  # a uniformly random 48/196 mask gives ~0.002 here


def test_block_mask_small_grid():
    m = block_mask(100, (8, 8), num_patches=38, min_block=4, generator=gen(3))
    assert m.shape == (100, 64)
    counts = m.sum(-1)
    assert (counts <= 38).all() and counts.float().mean().item() >= 37


def test_block_mask_is_deterministic_and_validates():
    assert torch.equal(block_mask(4, (14, 14), generator=gen(7)), block_mask(4, (14, 14), generator=gen(7)))
    assert not torch.equal(block_mask(4, (14, 14), generator=gen(7)), block_mask(4, (14, 14), generator=gen(8)))
    with pytest.raises(ValueError):
        block_mask(2, (4, 4), num_patches=20)


# ----------------------------------------------------------------------------- text_mask (text)
SPECIALS, PAD, EOS, BOS, MASK_IDX, VOCAB = (0, 1, 2), 1, 2, 0, 999, 1000


def sentences(B: int = 64, T: int = 256, seed: int = 0) -> torch.Tensor:
    """long [B, T]: <s> words </s> <pad>..., with a different length per row."""
    g = gen(seed)
    tokens = torch.randint(4, MASK_IDX, (B, T), generator=g)
    lengths = torch.randint(T // 2, T, (B,), generator=g)
    for b, n in enumerate(lengths.tolist()):
        tokens[b, 0], tokens[b, n - 1], tokens[b, n:] = BOS, EOS, PAD
    return tokens


def test_text_mask_bert_80_10_10():
    tok = sentences()
    out = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, generator=gen(1))
    assert isinstance(out, TextMask) and out.tokens.dtype == torch.long and out.mask.dtype == torch.bool
    maskable = tok > 3
    sel, n_sel = out.mask, out.mask.sum().item()
    assert abs(n_sel / maskable.sum().item() - 0.15) < 0.01
    unchanged = (sel & (out.tokens == tok)).sum().item() / n_sel
    random = (sel & ~out.replaced & (out.tokens != tok)).sum().item() / n_sel
    assert abs(out.replaced.sum().item() / n_sel - 0.8) < 0.03
    assert abs(unchanged - 0.1) < 0.03 and abs(random - 0.1) < 0.03
    assert not (sel & ~maskable).any()  # never <s>, </s> or padding
    assert torch.equal(out.tokens[~sel], tok[~sel])  # unselected positions untouched
    assert (out.tokens[out.replaced] == MASK_IDX).all() and not (out.replaced & ~sel).any()
    assert not (out.tokens[sel & ~out.replaced] == MASK_IDX).any()


def test_text_mask_selects_exactly_the_rounded_count_per_row():
    tok = sentences(seed=2)
    out = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, generator=gen(2))
    n = (tok > 3).sum(-1).float()
    k = out.mask.sum(-1).float()
    assert ((k - (0.15 * n).floor()) >= 0).all() and ((k - (0.15 * n).floor()) <= 1).all()


def test_text_mask_random_tokens_avoid_mask_and_specials():
    tok = sentences(B=8, T=64)
    # vocabulary {0..3 specials, 4, 5 = <mask>}: every random token must be 4
    out = text_mask(tok, mask_idx=5, vocab_size=6, prob=0.5, random_token_prob=1.0, leave_unmasked_prob=0.0,
                    generator=gen(3))
    assert not out.replaced.any() and (out.tokens[out.mask] == 4).all()
    # <mask> in the middle of the range: random ids cover {4, 6, 7}, never 5
    out = text_mask(tok, mask_idx=5, vocab_size=8, prob=0.5, random_token_prob=1.0, leave_unmasked_prob=0.0,
                    generator=gen(3))
    assert set(out.tokens[out.mask].tolist()) == {4, 6, 7}


def test_text_mask_span_variant_035_4():
    tok = sentences(seed=4)
    out = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, prob=0.35, length=4,
                    random_token_prob=0.0, leave_unmasked_prob=0.0, generator=gen(4))
    maskable = tok > 3
    ratio = out.mask.sum().item() / maskable.sum().item()
    assert 0.25 <= ratio <= 0.35, ratio  # overlapping spans cover a bit less than 35%
    assert torch.equal(out.replaced, out.mask)  # released config 0 / 0: everything selected is <mask>
    assert not (out.mask & ~maskable).any()
    for row, ok in zip(out.mask.tolist(), maskable.tolist()):
        for s, e in runs(row):  # a run shorter than 4 must have been cut by </s>
            assert e - s >= 4 or not ok[e]


def test_text_mask_is_deterministic_and_checks_input():
    tok = sentences(B=4, T=32)
    a = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, generator=gen(5))
    b = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, generator=gen(5))
    c = text_mask(tok, mask_idx=MASK_IDX, vocab_size=VOCAB, generator=gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.mask, c.mask)
    with pytest.raises(TypeError):
        text_mask(tok.float(), mask_idx=MASK_IDX, vocab_size=VOCAB)
