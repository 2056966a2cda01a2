"""Text conditioning: the weights syntax, 77-token chunks, weighting, pooled vectors, clip skip, SDXL."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from farm.engine import text  # noqa: E402
from farm.engine.text import BOS, EOS  # noqa: E402
from farm.nodes.base import RunContext  # noqa: E402
from farm.nodes.conditioning import CLIPTextEncode, CLIPTextEncodeSDXL  # noqa: E402
from tests.engine.clip_fixtures import G_PROJECTION, G_WIDTH, H_WIDTH, L_WIDTH, text_encoders, tokenizer  # noqa: E402

CAT, DOG, A = 2368, 1929, 320  # "cat", "dog", "a" in CLIP's vocabulary


# --- weights syntax ---------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat) dog", [("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]),
    ("((cat))", [("cat", 1.1 * 1.1)]),
    ("(cat:1.5), dog", [("cat", 1.5), (", dog", 1.0)]),
    # An explicit weight replaces the emphasis; groups inside a weighted group inherit its weight.
    ("((cat:1.5) dog)", [("cat", 1.5), (" dog", 1.1)]),
    ("(a (b:0.5) c:1.3)", [("a ", 1.3), ("b", 0.5), (" c", 1.3)]),
    ("(cat: 0.25 )", [("cat", 0.25)]),
    (r"\(cat\)", [("(cat)", 1.0)]),
    (r"(a \(b\))", [("a (b)", 1.1)]),
    (r"\((cat)\)", [("(", 1.0), ("cat", 1.1), (")", 1.0)]),
    # Unbalanced parentheses stay text; a stray ")" hides the groups after it.
    ("a (cat", [("a ", 1.0), ("(cat", 1.0)]),
    ("a) (cat) dog", [("a) (cat) dog", 1.0)]),
    ("(cat)) dog", [("cat", 1.1), (") dog", 1.0)]),
    # No A1111 de-emphasis; a weight that is no number, or a leading colon, is text.
    ("[cat]", [("[cat]", 1.0)]),
    ("(cat:x)", [("cat:x", 1.1)]),
    ("(:2)", [(":2", 1.1)]),
    ("()", []),
    ("", []),
])
def test_weights_syntax(prompt, expected):
    parsed = text.parse_weights(prompt)
    assert [part for part, _ in parsed] == [part for part, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


# --- chunks -----------------------------------------------------------------------------------

def ids(chunk):
    return [token for token, _ in chunk]


def test_a_short_segment_that_does_not_fit_moves_whole_to_the_next_chunk():
    chunks = text.chunk_segments([[(1, 1.0)] * 70, [(2, 1.2)] * 7])
    assert len(chunks) == 2
    assert ids(chunks[0]) == [BOS] + [1] * 70 + [EOS] + [None] * 5
    assert ids(chunks[1]) == [BOS] + [2] * 7 + [EOS] + [None] * 68
    assert [w for _, w in chunks[1][:9]] == [1.0] + [1.2] * 7 + [1.0]


def test_a_segment_of_eight_tokens_is_split_at_the_boundary():
    chunks = text.chunk_segments([[(1, 1.0)] * 70, [(2, 1.0)] * 8])
    assert ids(chunks[0]) == [BOS] + [1] * 70 + [2] * 5 + [EOS]
    assert ids(chunks[1]) == [BOS] + [2] * 3 + [EOS] + [None] * 72


@pytest.mark.parametrize("lengths, count", [([75], 1), ([76], 2), ([68, 7], 1), ([69, 7], 2), ([150], 2), ([151], 3)])
def test_chunk_counts(lengths, count):
    chunks = text.chunk_segments([[(i, 1.0)] * n for i, n in enumerate(lengths)])
    assert len(chunks) == count
    assert all(len(chunk) == 77 and chunk[0][0] == BOS for chunk in chunks)


def test_tokenize_uses_each_weighted_segment_and_an_empty_prompt_is_one_chunk():
    tok = tokenizer()
    [chunk] = text.tokenize(tok, "a (cat:1.5) dog")
    assert chunk[:5] == [(BOS, 1.0), (A, 1.0), (CAT, 1.5), (DOG, 1.0), (EOS, 1.0)]
    assert text.tokenize(tok, "") == [[(BOS, 1.0), (EOS, 1.0)] + [(None, 1.0)] * 75]
    # 70 tokens, then a 7-token group that no longer fits: it starts the second chunk.
    chunks = text.tokenize(tok, "a " * 70 + "(a a a a a a a)")
    assert [token for token, _ in chunks[0][69:73]] == [A, A, EOS, None]
    assert chunks[1][:9] == [(BOS, 1.0)] + [(A, 1.1)] * 7 + [(EOS, 1.0)]


# --- encoding ---------------------------------------------------------------------------------

def hf_states(model, rows):
    """What the transformers model gives for these token rows (the reference)."""
    with torch.no_grad():
        return model(torch.tensor(rows), output_hidden_states=True)


def final_norm(model, hidden):
    with torch.no_grad():
        return getattr(model, "text_model", model).final_layer_norm(hidden)


def row(tokens, pad):
    tokens = [BOS, *tokens, EOS]
    return tokens + [pad] * (77 - len(tokens))


def test_sd1_uses_the_normalised_last_layer_pads_with_eos_and_pools_at_the_first_eos():
    clip = text_encoders("sd1")
    [[cond, extras]] = text.encode_text(clip, "a cat")
    reference = hf_states(clip.encoders["l"], [row([A, CAT], EOS)])
    assert cond.shape == (1, 77, L_WIDTH) and cond.dtype == torch.float32
    assert torch.allclose(cond, reference.last_hidden_state, atol=1e-6)
    assert torch.allclose(extras["pooled_output"], reference.last_hidden_state[:, 3], atol=1e-6)


def test_a_prompt_of_100_tokens_gives_two_chunks():
    clip = text_encoders("sd1")
    [[cond, extras]] = text.encode_text(clip, "a " * 100)
    assert cond.shape == (1, 154, L_WIDTH)
    assert extras["pooled_output"].shape == (1, L_WIDTH)


def test_pooled_comes_from_the_first_chunk():
    clip = text_encoders("sd1")
    [[long_cond, long]] = text.encode_text(clip, "a " * 75 + "cat dog")
    [[first_cond, first]] = text.encode_text(clip, "a " * 75)
    assert torch.allclose(long["pooled_output"], first["pooled_output"], atol=1e-6)
    assert torch.allclose(long_cond[:, :77], first_cond, atol=1e-6)


def test_weight_one_everywhere_is_the_plain_encoding():
    clip = text_encoders("sd1")
    [[plain, _]] = text.encode_text(clip, "cat dog")
    [[weighted_one, _]] = text.encode_text(clip, "(cat:1.0) dog")
    assert torch.equal(plain, weighted_one)


def test_weighted_tokens_move_from_the_empty_sequence_and_the_others_stay():
    clip = text_encoders("sd1")
    [[cond, extras]] = text.encode_text(clip, "(cat:1.5) dog")
    states = hf_states(clip.encoders["l"], [row([CAT, DOG], EOS), row([], EOS)]).last_hidden_state
    z, empty = states[0], states[1]
    expected = z.clone()
    expected[1] = empty[1] + 1.5 * (z[1] - empty[1])
    assert torch.allclose(cond[0], expected, atol=1e-5)
    [[plain, plain_extras]] = text.encode_text(clip, "cat dog")
    unweighted = [i for i in range(77) if i != 1]
    assert torch.allclose(cond[0, unweighted], plain[0, unweighted], atol=1e-6)
    # The empty sequence joins the batch but not the pooled vector.
    assert torch.allclose(extras["pooled_output"], plain_extras["pooled_output"], atol=1e-6)


def test_clip_skip_on_sd1_normalises_the_chosen_layer():
    clip = text_encoders("sd1", layer=-2)
    [[cond, extras]] = text.encode_text(clip, "a cat")
    reference = hf_states(clip.encoders["l"], [row([A, CAT], EOS)])
    assert torch.allclose(cond, final_norm(clip.encoders["l"], reference.hidden_states[-2]), atol=1e-6)
    # The pooled vector always comes from the full depth.
    assert torch.allclose(extras["pooled_output"], reference.last_hidden_state[:, 3], atol=1e-6)
    # A layer past the encoder's depth means the last layer.
    [[deep, _]] = text.encode_text(dataclasses.replace(clip, layer=-24), "a cat")
    assert torch.allclose(deep, reference.last_hidden_state, atol=1e-6)


def test_sd2_takes_the_normalised_penultimate_layer_and_pads_with_zero():
    clip = text_encoders("sd2")
    [[cond, extras]] = text.encode_text(clip, "a cat")
    model = clip.encoders["h"]
    reference = hf_states(model, [row([A, CAT], 0)])
    assert cond.shape == (1, 77, H_WIDTH)
    assert torch.allclose(cond, final_norm(model, reference.hidden_states[-2]), atol=1e-6)
    assert torch.allclose(extras["pooled_output"], reference.text_embeds, atol=1e-6)


def test_sdxl_joins_the_raw_penultimate_layers_of_l_and_g_and_pools_the_projected_g():
    clip = text_encoders("sdxl")
    [[cond, extras]] = text.encode_text(clip, "a cat")
    ref_l = hf_states(clip.encoders["l"], [row([A, CAT], EOS)])
    ref_g = hf_states(clip.encoders["g"], [row([A, CAT], 0)])  # G pads with 0, L with EOS
    assert cond.shape == (1, 77, L_WIDTH + G_WIDTH)
    assert torch.allclose(cond[..., :L_WIDTH], ref_l.hidden_states[-2], atol=1e-6)
    assert torch.allclose(cond[..., L_WIDTH:], ref_g.hidden_states[-2], atol=1e-6)
    assert extras["pooled_output"].shape == (1, G_PROJECTION)
    assert torch.allclose(extras["pooled_output"], ref_g.text_embeds, atol=1e-6)
    # CLIPSetLastLayer applies to both encoders.
    [[last, _]] = text.encode_text(dataclasses.replace(clip, layer=-1), "a cat")
    assert torch.allclose(last[..., :L_WIDTH], ref_l.hidden_states[-1], atol=1e-6)
    assert torch.allclose(last[..., L_WIDTH:], ref_g.hidden_states[-1], atol=1e-6)


def test_clip_text_encode_sdxl_pads_the_shorter_prompt_with_empty_chunks():
    clip = text_encoders("sdxl")
    [[cond, extras]] = text.encode_sdxl(clip, "a " * 100, "cat", 1024, 768, 8, 16, 2048, 1536)
    assert cond.shape == (1, 154, L_WIDTH + G_WIDTH)
    empty_l = hf_states(clip.encoders["l"], [row([], EOS)]).hidden_states[-2]
    assert torch.allclose(cond[:, 77:, :L_WIDTH], empty_l, atol=1e-6)
    assert {k: v for k, v in extras.items() if k != "pooled_output"} == {
        "width": 1024, "height": 768, "crop_w": 8, "crop_h": 16, "target_width": 2048, "target_height": 1536}
    with pytest.raises(ValueError, match="SDXL"):
        text.encode_sdxl(text_encoders("sd1"), "a", "b", 1024, 1024, 0, 0, 1024, 1024)


def test_the_refiner_encodes_with_g_alone_and_adds_its_score():
    clip = text_encoders("sdxl_refiner")
    [[cond, extras]] = text.encode_sdxl_refiner(clip, "a cat", 2.5, 800, 600)
    assert cond.shape == (1, 77, G_WIDTH)
    assert extras["aesthetic_score"] == 2.5 and (extras["width"], extras["height"]) == (800, 600)
    assert extras["pooled_output"].shape == (1, G_PROJECTION)


def test_half_precision_encoders_compute_in_float32_and_stay_half():
    clip = text_encoders("sd1")
    model = clip.encoders["l"].half()
    [[cond, _]] = text.encode_text(clip, "(a:1.2) cat")
    assert next(model.parameters()).dtype == torch.float16
    clip.encoders["l"] = model.float()  # the same fp16-rounded weights, now stored as float32
    [[reference, _]] = text.encode_text(clip, "(a:1.2) cat")
    assert cond.dtype == torch.float32
    assert torch.equal(cond, reference)


def test_clip_text_encode_node():
    ctx = RunContext(prompt_id="p", node_id="1", storage=None)
    clip = text_encoders("sd1")
    [[cond, extras]] = CLIPTextEncode().run(ctx, text="a cat", clip=clip).values[0]
    assert cond.shape == (1, 77, L_WIDTH) and extras["pooled_output"].shape == (1, L_WIDTH)
    with pytest.raises(ValueError, match="clip input is invalid"):
        CLIPTextEncode().run(ctx, text="a cat", clip=None)
    sdxl = CLIPTextEncodeSDXL().run(ctx, clip=text_encoders("sdxl"), width=1024, height=1024, crop_w=0, crop_h=0,
                                    target_width=1024, target_height=1024, text_g="a cat", text_l="a dog")
    assert sdxl.values[0][0][0].shape == (1, 77, L_WIDTH + G_WIDTH)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_encoders_on_cuda_compute_in_float32_and_return_cpu_tensors():
    clip = text_encoders("sdxl")
    for name, model in clip.encoders.items():
        clip.encoders[name] = model.half().float()  # fp16-rounded weights, float32 on the CPU
    [[want, want_extras]] = text.encode_text(clip, "a (cat:1.3) " * 30)
    for name, model in clip.encoders.items():
        clip.encoders[name] = model.half().cuda()
    [[got, got_extras]] = text.encode_text(clip, "a (cat:1.3) " * 30)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert torch.allclose(got_extras["pooled_output"], want_extras["pooled_output"], atol=1e-4, rtol=1e-4)
