#!/usr/bin/env python3
"""Tiny SDXL ControlNets (canny, depth), control images and diffusers references for
StableDiffusionXLControlNetPipeline / StableDiffusionXLControlNetImg2ImgPipeline / MultiControlNet.

    /opt/refenv/bin/python tools/reference/make_controlnet_references.py

Needs tests/fixtures/tiny-sdxl/ (make_tiny_sdxl.py) and tests/fixtures/reference/init_256.png (make_references.py),
and opencv-python-headless in the environment (cv2.Canny, cv2.cvtColor).

Writes
  tests/fixtures/tiny-controlnet-canny/            config.json (diffusers/controlnet-canny-sdxl-1.0's, shrunk) +
                                                   diffusion_pytorch_model.fp16.safetensors (fp16)
  tests/fixtures/tiny-controlnet-canny.safetensors the same weights as one file (a byte copy of the folder's file)
  tests/fixtures/tiny-controlnet-depth/            config.json (diffusers/controlnet-depth-sdxl-1.0's, shrunk) +
                                                   diffusion_pytorch_model.safetensors (fp16), other random weights
  tests/fixtures/reference/{canny_source_128,control_canny_128,control_depth_128,control_canny_96x80}.png
  tests/fixtures/reference/controlnet.safetensors + controlnet_cases.json

Every fixture is fp16; every reference runs diffusers on CPU in float32 from the reloaded fp16 weights. At the end
the script runs itself once more in a fresh process (--no-rerun) and checks that every output is byte-identical.
"""
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config as C  # noqa: E402
from make_references import to_u8  # noqa: E402
from make_tiny_sdxl import write_json  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
CANNY = os.path.join(FIX, "tiny-controlnet-canny")
CANNY_FILE = os.path.join(FIX, "tiny-controlnet-canny.safetensors")
DEPTH = os.path.join(FIX, "tiny-controlnet-depth")
OUT = os.path.join(FIX, "reference")

# the published repos ship both names; each tiny folder carries one of them, so both layouts get exercised
CANNY_ST = "diffusion_pytorch_model.fp16.safetensors"  # load with variant="fp16"
DEPTH_ST = "diffusion_pytorch_model.safetensors"

PNG = dict(canny_source="canny_source_128.png", canny="control_canny_128.png", depth="control_depth_128.png",
           canny_small="control_canny_96x80.png")
CANNY_LOW, CANNY_HIGH = 100, 200

# weight init (see README): zero convolutions redrawn N(0, ZERO_CONV_STD), biases N(0, ZERO_CONV_BIAS_STD);
# conditioning embedding redrawn N(0, COND_GAIN / sqrt(fan_in)), biases N(0, 0.05), then its conv_out (weight and
# bias) scaled so that the embedding of the net's own control image has std COND_TARGET_STD (about the std of
# conv_in(latents)), so the control image, not just the ControlNet's presence, visibly changes the output
ZERO_CONV_STD = 0.15
ZERO_CONV_BIAS_STD = 0.02
COND_GAIN = 1.5
COND_TARGET_STD = 0.5
ENCODER_JITTER = 0.05  # depth only: encoder parameters p * (1 + 0.05 N(0,1)), so it is not the unet's copy

PROMPT = "a house by the sea"
CASES = [
    dict(name="one_canny_07", pipeline="StableDiffusionXLControlNetPipeline", controlnets=["canny"],
         control_images=[PNG["canny"]], controlnet_conditioning_scale=0.7, prompt=PROMPT, negative_prompt=None,
         seed=4, steps=5, guidance_scale=6.0),
    dict(name="two_controlnets", pipeline="StableDiffusionXLControlNetPipeline", controlnets=["canny", "depth"],
         control_images=[PNG["canny"], PNG["depth"]], controlnet_conditioning_scale=[0.5, 0.8], prompt=PROMPT,
         negative_prompt="blurry", seed=5, steps=5, guidance_scale=6.0),
    dict(name="guidance_end_05", pipeline="StableDiffusionXLControlNetPipeline", controlnets=["canny"],
         control_images=[PNG["canny"]], controlnet_conditioning_scale=1.0, control_guidance_start=0.0,
         control_guidance_end=0.5, prompt=PROMPT, negative_prompt=None, seed=6, steps=6, guidance_scale=6.0),
    dict(name="img2img_canny", pipeline="StableDiffusionXLControlNetImg2ImgPipeline", controlnets=["canny"],
         control_images=[PNG["canny"]], image=PNG["canny_source"], strength=0.6, controlnet_conditioning_scale=0.8,
         prompt=PROMPT, negative_prompt=None, seed=7, steps=5, guidance_scale=6.0),
    dict(name="nocfg_canny", pipeline="StableDiffusionXLControlNetPipeline", controlnets=["canny"],
         control_images=[PNG["canny"]], controlnet_conditioning_scale=1.0, prompt=PROMPT, negative_prompt=None,
         seed=8, steps=4, guidance_scale=1.0),
]
for _c in CASES:
    _c.update(width=128, height=128, batch=1, guess_mode=False)
    _c.setdefault("control_guidance_start", 0.0)
    _c.setdefault("control_guidance_end", 1.0)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), (what, sorted(set(sa) ^ set(sb))[:5])
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (what, k)


def check_config(loaded, published, what):
    for k, v in published.items():
        if not k.startswith("_"):
            got = loaded[k]
            got = list(got) if isinstance(got, tuple) else got
            assert got == v, (what, k, got, v)


def versions():
    import cv2
    import diffusers
    import PIL
    import transformers

    return dict(diffusers=diffusers.__version__, torch=torch.__version__, transformers=transformers.__version__,
                numpy=np.__version__, opencv=cv2.__version__, pillow=PIL.__version__,
                python=platform.python_version(), cpu_capability=torch.backends.cpu.get_cpu_capability())


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
ENCODER_PREFIXES = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
ZERO_CONV_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def build_controlnet(unet, seed, jitter, calib_png):
    """ControlNetModel.from_unet (the encoder copies the unet), then every zero convolution and the conditioning
    embedding redrawn so the ControlNet changes the image; `jitter` also perturbs the copied encoder."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tuple(C.CONTROLNET_SHRINK["conditioning_embedding_out_channels"]))
    # from_unet: the encoder is the unet's, the zero convolutions are zero
    usd = unet.state_dict()
    for k, v in cn.state_dict().items():
        if k.startswith(ENCODER_PREFIXES):
            assert torch.equal(v, usd[k]), k
        elif k.startswith(ZERO_CONV_PREFIXES):
            assert not v.any(), k
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in cn.named_parameters():  # named_parameters order is deterministic (module order)
            if n.startswith(ZERO_CONV_PREFIXES):
                std = ZERO_CONV_STD if n.endswith("weight") else ZERO_CONV_BIAS_STD
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif n.startswith("controlnet_cond_embedding."):
                if n.endswith("weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * (COND_GAIN / p[0].numel() ** 0.5))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif jitter and n.startswith(ENCODER_PREFIXES):
                p.mul_(1.0 + jitter * torch.randn(p.shape, generator=g))
        x = torch.from_numpy(np.asarray(load_png(calib_png)).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        factor = COND_TARGET_STD / float(cn.controlnet_cond_embedding(x).std())
        cn.controlnet_cond_embedding.conv_out.weight.mul_(factor)
        cn.controlnet_cond_embedding.conv_out.bias.mul_(factor)
    return cn, factor


def save_controlnet(cn, folder, filename, config):
    """save_pretrained (fp16 safetensors) under the published file name, then the published config."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    tmp = tempfile.mkdtemp()
    cn.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(os.path.join(tmp, "diffusion_pytorch_model.safetensors"), os.path.join(folder, filename))
    shutil.rmtree(tmp)
    write_json(os.path.join(folder, "config.json"), config, sort_keys=True)  # diffusers writes sorted keys
    sd = load_file(os.path.join(folder, filename))
    assert all(v.dtype == torch.float16 for v in sd.values()), folder
    return sd


def load_controlnet(folder, variant):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder, variant=variant, torch_dtype=torch.float32, local_files_only=True)


def check_controlnet_folder(cn_fp16, loaded, config, what):
    a = cn_fp16.state_dict()
    b = loaded.state_dict()
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k].float(), b[k]), (what, k)
    check_config(loaded.config, config, what)
    # not in the published file (diffusers 0.20 had no such argument): the default applies
    assert loaded.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert loaded.controlnet_cond_embedding.conv_in.in_channels == 3
    assert len(loaded.controlnet_down_blocks) == 9


def write_single_file():
    """The folder's weights file under a single-file name: SDXL ControlNets published as one file (e.g.
    diffusers_xl_canny_full.safetensors) are diffusers-layout files like this one (git stores the blob once)."""
    shutil.copyfile(os.path.join(CANNY, CANNY_ST), CANNY_FILE)
    sd = load_file(CANNY_FILE)
    assert all(k.startswith(("conv_in.", "time_embedding.", "add_embedding.", "controlnet_", "down_blocks.",
                             "mid_block.")) for k in sd), "diffusers key names"
    return sd


def check_single_file(folder_model):
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    sd = load_file(CANNY_FILE)
    # what diffusers 0.42.1 would infer (and fetch the config of) without config=
    assert infer_diffusers_model_type(sd) == "controlnet_xl_large"
    sf = ControlNetModel.from_single_file(CANNY_FILE, config=CANNY, local_files_only=True, torch_dtype=torch.float32)
    same_weights(folder_model, sf, "canny single file")
    check_config(sf.config, C.CONTROLNET_CANNY_CONFIG, "canny single file")
    return sf


# --------------------------------------------------------------------------------------------
# control images
# --------------------------------------------------------------------------------------------
def save_png(arr, name):
    path = os.path.join(OUT, name)
    Image.fromarray(arr, "RGB").save(path, optimize=False)
    back = np.asarray(Image.open(path))
    assert back.dtype == np.uint8 and np.array_equal(back, arr), name
    return path


def canny_rgb(rgb, low, high):
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    # the documented algorithm (README) gives OpenCV's results bit for bit
    assert np.array_equal(gray, opencv_rgb2gray_u8(rgb)), "documented RGB2GRAY"
    assert np.array_equal(edges, opencv_canny_u8(gray, low, high)), ("documented Canny", rgb.shape, low, high)
    return gray, edges, np.stack([edges] * 3, -1)


PIL_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2


def _pil_lanczos_coeffs(in_size, out_size):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (libImaging/Resample.c) for LANCZOS (support 3)."""
    def sinc(x):
        if x == 0.0:
            return 1.0
        x = x * math.pi
        return math.sin(x) / x

    def lanczos(x):
        return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - xmin
        w = [lanczos((x + xmin - center + 0.5) / filterscale) for x in range(n)]
        ww = 0.0
        for v in w:
            ww += v
        w = [v / ww for v in w] if ww != 0.0 else w
        k = [int(-0.5 + v * (1 << PIL_PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PIL_PRECISION_BITS))
             for v in w]
        out.append((xmin, k))
    return out


def pil_lanczos_u8(arr, width, height):
    """PIL.Image.resize((width, height), LANCZOS) of a uint8 HxWxC array, re-implemented: separable, the horizontal
    pass first (only if the width changes) into a uint8 intermediate, then the vertical pass (only if the height
    changes); integer taps k = round-half-away(w * 2^22) of the normalised Lanczos-3 weights, accumulator starts at
    2^21, result = clip(acc >> 22, 0, 255)."""
    a = arr.astype(np.int64)

    def clip8(acc):
        return np.where(acc >= (1 << PIL_PRECISION_BITS << 8), 255, np.where(acc <= 0, 0, acc >> PIL_PRECISION_BITS))

    if width != a.shape[1]:
        tmp = np.empty((a.shape[0], width, a.shape[2]), np.int64)
        for xx, (xmin, k) in enumerate(_pil_lanczos_coeffs(a.shape[1], width)):
            acc = np.full((a.shape[0], a.shape[2]), 1 << (PIL_PRECISION_BITS - 1), np.int64)
            for x, kx in enumerate(k):
                acc += a[:, xmin + x, :] * kx
            tmp[:, xx, :] = clip8(acc)
        a = tmp
    if height != a.shape[0]:
        tmp = np.empty((height, a.shape[1], a.shape[2]), np.int64)
        for yy, (ymin, k) in enumerate(_pil_lanczos_coeffs(a.shape[0], height)):
            acc = np.full((a.shape[1], a.shape[2]), 1 << (PIL_PRECISION_BITS - 1), np.int64)
            for y, ky in enumerate(k):
                acc += a[ymin + y, :, :] * ky
            tmp[yy] = clip8(acc)
        a = tmp
    return a.astype(np.uint8)


def opencv_rgb2gray_u8(rgb, bits=15):
    """cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) of OpenCV 5.0 (bits=15): (9798 R + 19235 G + 3735 B + 2^14) >> 15.
    bits=14 gives OpenCV 4.x's (4899 R + 9617 G + 1868 B + 2^13) >> 14 (only used to count the difference)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    if bits == 15:
        return ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15).astype(np.uint8)
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def opencv_canny_u8(gray, low, high):
    """cv2.Canny(gray, low, high) (apertureSize 3, L2gradient False), re-implemented:
    1. gx, gy = 3x3 Sobel (int) with BORDER_REPLICATE: gx = [[-1,0,1],[-2,0,2],[-1,0,1]] correlation, gy its transpose;
    2. mag = |gx| + |gy|; outside the image mag = 0;
    3. non-maximum suppression (needs mag > low), with TG22 = int(tan(22.5 deg) * 2^15 + 0.5) = 13573,
       a = |gx|, b = |gy| << 15: if b < a * TG22 (horizontal gradient): mag > left and mag >= right; elif
       b > a * TG22 + (a << 16) (vertical): mag > above and mag >= below; else (diagonal) with s = -1 if gx, gy
       have opposite signs else +1: s = +1: mag > above-left and mag > below-right, s = -1: mag > above-right and
       mag > below-left (strict both ways);
    4. hysteresis: a surviving pixel with mag > high is an edge; a surviving pixel 8-connected (through surviving
       pixels) to an edge is an edge; low / high are floor()ed, swapped if low > high. Output 0 / 255."""
    from collections import deque

    low, high = sorted((int(math.floor(low)), int(math.floor(high))))
    h, w = gray.shape
    g = np.pad(gray.astype(np.int64), 1, mode="edge")

    def at(dy, dx):
        return g[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    mag = np.abs(gx) + np.abs(gy)
    mp = np.pad(mag, 1)

    def m(dy, dx):
        return mp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    tg22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    a, b = np.abs(gx), np.abs(gy) << 15
    horiz = b < a * tg22
    vert = ~horiz & (b > a * tg22 + (a << 16))
    diag = ~(horiz | vert)
    same_sign = (gx ^ gy) >= 0
    keep = horiz & (mag > m(0, -1)) & (mag >= m(0, 1))
    keep |= vert & (mag > m(-1, 0)) & (mag >= m(1, 0))
    keep |= diag & np.where(same_sign, (mag > m(-1, -1)) & (mag > m(1, 1)), (mag > m(-1, 1)) & (mag > m(1, -1)))
    keep &= mag > low
    edge = keep & (mag > high)
    todo = deque(zip(*np.nonzero(edge)))
    while todo:
        y, x = todo.popleft()
        for yy in range(max(y - 1, 0), min(y + 2, h)):
            for xx in range(max(x - 1, 0), min(x + 2, w)):
                if keep[yy, xx] and not edge[yy, xx]:
                    edge[yy, xx] = True
                    todo.append((yy, xx))
    return edge.astype(np.uint8) * 255


def make_depth_128():
    """A smooth 'depth map': near (bright) at the bottom, a sphere and a raised block; gray in 3 channels."""
    h = w = 128
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    d = 40.0 + 120.0 * (y / (h - 1)) ** 1.5  # ground plane receding upwards
    r = np.hypot(x - 84, y - 60)
    sphere = r < 30
    d[sphere] = np.maximum(d[sphere], 150.0 + 100.0 * np.sqrt(1.0 - (r[sphere] / 30.0) ** 2))
    block = (x > 14) & (x < 52) & (y > 70) & (y < 118)
    d[block] = 200.0 - 0.5 * (y[block] - 70)
    g = np.clip(np.round(d), 0, 255).astype(np.uint8)
    return np.stack([g] * 3, -1)


def make_control_images():
    init = Image.open(os.path.join(OUT, "init_256.png")).convert("RGB")
    init_arr = np.asarray(init)
    assert init_arr.shape == (256, 256, 3)
    t = {}
    # photo-like source at the output size, its edges = the canny control image (no resize in the pipeline)
    src = np.asarray(init.resize((128, 128), resample=Image.Resampling.LANCZOS))
    assert np.array_equal(src, pil_lanczos_u8(init_arr, 128, 128)), "documented PIL Lanczos (downscale)"
    save_png(src, PNG["canny_source"])
    gray, edges, ctrl = canny_rgb(src, CANNY_LOW, CANNY_HIGH)
    save_png(ctrl, PNG["canny"])
    t["canny/gray_128"] = torch.from_numpy(gray.copy())
    t["canny/opencv_edges_128"] = torch.from_numpy(edges.copy())
    # edges of init_256.png itself, two threshold pairs
    gray256, e1, _ = canny_rgb(init_arr, CANNY_LOW, CANNY_HIGH)
    _, e2, _ = canny_rgb(init_arr, 50, 150)
    t["canny/gray_256"] = torch.from_numpy(gray256.copy())
    t["canny/opencv_edges_256"] = torch.from_numpy(e1.copy())
    t["canny/opencv_edges_256_50_150"] = torch.from_numpy(e2.copy())
    for k in ("canny/opencv_edges_128", "canny/opencv_edges_256", "canny/opencv_edges_256_50_150"):
        u = set(np.unique(t[k].numpy()).tolist())
        assert u == {0, 255}, (k, u)
    assert not torch.equal(t["canny/opencv_edges_256"], t["canny/opencv_edges_256_50_150"])
    # depth
    save_png(make_depth_128(), PNG["depth"])
    # a control image of another size (W 96 x H 80): the pipeline resizes it
    small = np.asarray(init.resize((96, 80), resample=Image.Resampling.LANCZOS))
    assert np.array_equal(small, pil_lanczos_u8(init_arr, 96, 80))
    _, _, small_ctrl = canny_rgb(small, CANNY_LOW, CANNY_HIGH)
    save_png(small_ctrl, PNG["canny_small"])
    # the documented Canny on harder inputs too: noise (many ties and diagonals) and blurred noise, odd sizes
    import cv2

    rng = np.random.default_rng(0)
    for i in range(4):
        a = rng.integers(0, 256, (61 + i, 83, 3), dtype=np.uint8)
        if i % 2:
            a = cv2.GaussianBlur(a, (5, 5), 1.5)
        for lo, hi in ((100, 200), (50, 150), (20, 60), (200, 100)):
            canny_rgb(a, lo, hi)
    g4 = opencv_rgb2gray_u8(init_arr, bits=14)
    opencv4 = dict(gray_pixels_differing=int((g4 != gray256).sum()),
                   edge_pixels_differing_100_200=int((opencv_canny_u8(g4, 100, 200) != e1).sum()))
    meta = dict(
        opencv_rgb2gray=opencv_rgb2gray_u8.__doc__.replace("\n    ", " ").strip(),
        opencv_canny=opencv_canny_u8.__doc__.replace("\n    ", " ").replace("\n       ", " ").strip(),
        opencv4_gray_on_init_256=opencv4,
        canny_source_128="init_256.png resized to 128x128 with PIL Image.resize(resample=LANCZOS, reducing_gap=None)",
        control_canny_128="cv2.Canny(cv2.cvtColor(canny_source_128, cv2.COLOR_RGB2GRAY), 100, 200) (apertureSize 3, "
                          "L2gradient False), stacked to 3 channels (0/255)",
        control_depth_128="make_depth_128(): gray 0..255 in 3 channels, smooth (gradient, sphere, block)",
        control_canny_96x80="init_256.png resized to W 96 x H 80 (PIL LANCZOS), Canny 100/200, 3 channels",
        keys={"canny/gray_128": "cv2.cvtColor(canny_source_128, COLOR_RGB2GRAY) uint8 [128,128]",
              "canny/opencv_edges_128": "cv2.Canny(gray_128, 100, 200) uint8 [128,128] (= each channel of "
                                        "control_canny_128.png)",
              "canny/gray_256": "cv2.cvtColor(init_256.png, COLOR_RGB2GRAY) uint8 [256,256]",
              "canny/opencv_edges_256": "cv2.Canny(gray_256, 100, 200) uint8 [256,256]",
              "canny/opencv_edges_256_50_150": "cv2.Canny(gray_256, 50, 150) uint8 [256,256]"},
        edge_pixels={k: int((v > 0).sum()) for k, v in t.items() if "edges" in k})
    return t, meta


def load_png(name):
    return Image.open(os.path.join(OUT, name)).convert("RGB")


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
class Recorder:
    """Every ControlNet call (scale, first call's inputs/outputs per tag), every UNet call's residuals, the
    prepare_latents output and the callback state of each step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.multi = False
        self.cn_calls, self.cn_first, self.unet_calls, self.steps, self.prepared = [], {}, [], [], []

    def watch_controlnet(self, model, tag_fn):
        def hook(mod, args, kwargs, out):
            tag = tag_fn()
            names = ("sample", "timestep", "encoder_hidden_states", "controlnet_cond", "conditioning_scale")
            a = dict(zip(names, args))
            a.update({k: kwargs[k] for k in names if k in kwargs})
            scale = a["conditioning_scale"]
            self.cn_calls.append(dict(tag=tag, scale=list(scale) if isinstance(scale, list) else float(scale)))
            if tag not in self.cn_first:
                ack = kwargs["added_cond_kwargs"]
                down, mid = (out[0], out[1]) if isinstance(out, tuple) else (out.down_block_res_samples,
                                                                             out.mid_block_res_sample)
                self.cn_first[tag] = dict(
                    sample=a["sample"].clone(), timestep=torch.as_tensor(a["timestep"]).clone(),
                    encoder_hidden_states=a["encoder_hidden_states"].clone(),
                    controlnet_cond=[c.clone() for c in a["controlnet_cond"]] if isinstance(a["controlnet_cond"], list)
                    else a["controlnet_cond"].clone(),
                    text_embeds=ack["text_embeds"].clone(), time_ids=ack["time_ids"].clone(),
                    guess_mode=kwargs.get("guess_mode"), down=[d.clone() for d in down], mid=mid.clone())

        return model.register_forward_hook(hook, with_kwargs=True)

    def watch_unet(self, unet):
        def hook(mod, args, kwargs, out):
            down = kwargs.get("down_block_additional_residuals")
            mid = kwargs.get("mid_block_additional_residual")
            rec = dict(has_res=down is not None,
                       res_absmax=(max([float(d.abs().max()) for d in down] + [float(mid.abs().max())])
                                   if down is not None else None))
            if not self.unet_calls:
                rec.update(sample=args[0].clone(), out=(out[0] if isinstance(out, tuple) else out.sample).clone(),
                           down=[d.clone() for d in down] if down is not None else None,
                           mid=mid.clone() if mid is not None else None)
            self.unet_calls.append(rec)

        return unet.register_forward_hook(hook, with_kwargs=True)

    def wrap_prepare_latents(self, p):
        orig = p.prepare_latents

        def pl(*a, **k):
            t = orig(*a, **k)
            self.prepared.append(t.clone())
            return t

        p.prepare_latents = pl

    def callback(self, pipe, i, t, kw):
        s = dict(i=i, t=float(t))
        for k, v in kw.items():
            s[k] = v.clone() if torch.is_tensor(v) else [list(x) if isinstance(x, list) else x for x in v]
        self.steps.append(s)
        return {k: v for k, v in kw.items() if k == "latents"}


def expected_keep(n, starts, ends, multi):
    """diffusers' controlnet_keep (pipeline_controlnet_sd_xl.py, step 7.1)."""
    out = []
    for i in range(n):
        keeps = [1.0 - float(i / n < s or (i + 1) / n > e) for s, e in zip(starts, ends)]
        out.append(keeps if multi else keeps[0])
    return out


def make_pipelines(base, controlnets):
    from diffusers import (EulerDiscreteScheduler, StableDiffusionXLControlNetImg2ImgPipeline,
                           StableDiffusionXLControlNetPipeline, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline)

    comps = dict(vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
                 tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=base.unet,
                 scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config))
    out = {}
    for key, nets in (("canny", controlnets["canny"]), ("multi", [controlnets["canny"], controlnets["depth"]])):
        p = StableDiffusionXLControlNetPipeline(controlnet=nets, force_zeros_for_empty_prompt=True, **comps)
        out["StableDiffusionXLControlNetPipeline", key] = p
    p = StableDiffusionXLControlNetImg2ImgPipeline(controlnet=controlnets["canny"], requires_aesthetics_score=False,
                                                   force_zeros_for_empty_prompt=True, **comps)
    out["StableDiffusionXLControlNetImg2ImgPipeline", "canny"] = p
    out["plain", "txt2img"] = StableDiffusionXLPipeline(force_zeros_for_empty_prompt=True, **comps)
    out["plain", "img2img"] = StableDiffusionXLImg2ImgPipeline(requires_aesthetics_score=False,
                                                               force_zeros_for_empty_prompt=True, **comps)
    for p in out.values():
        p.set_progress_bar_config(disable=True)
        assert p.watermark is None, "invisible_watermark is installed: the pipeline would watermark the references"
        if "controlnet" in p.components:
            # let callback_on_step_end read diffusers' own per-step keep list (a local of __call__)
            p._callback_tensor_inputs = list(p._callback_tensor_inputs) + ["controlnet_keep"]
    return out


def run_cases(pipes, rec, base_sched_cfg):
    from diffusers import EulerDiscreteScheduler, MultiControlNetModel

    tensors, metas = {}, []
    for c in CASES:
        rec.reset()
        name = c["name"]
        multi = len(c["controlnets"]) > 1
        rec.multi = multi
        p = pipes[c["pipeline"], "multi" if multi else "canny"]
        assert isinstance(p.controlnet, MultiControlNetModel) == multi
        p.scheduler = EulerDiscreteScheduler.from_config(base_sched_cfg)
        images_in = [load_png(f) for f in c["control_images"]]
        cfg = c["guidance_scale"] > 1.0
        common = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance_scale"], num_images_per_prompt=c["batch"], output_type="np")
        kw = dict(common, controlnet_conditioning_scale=c["controlnet_conditioning_scale"], guess_mode=c["guess_mode"],
                  control_guidance_start=c["control_guidance_start"], control_guidance_end=c["control_guidance_end"],
                  generator=[torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["batch"])],
                  callback_on_step_end=rec.callback, callback_on_step_end_tensor_inputs=["latents", "controlnet_keep"])
        img2img = c["pipeline"] == "StableDiffusionXLControlNetImg2ImgPipeline"
        with torch.no_grad():
            if img2img:
                out = p(image=load_png(c["image"]), control_image=images_in[0], strength=c["strength"], **kw).images
            else:
                out = p(image=images_in if multi else images_in[0], height=c["height"], width=c["width"], **kw).images
        steps = list(rec.steps)
        n = len(steps)
        ts = [s["t"] for s in steps]
        keep = steps[0]["controlnet_keep"]
        assert all(s["controlnet_keep"] == keep for s in steps)
        starts = c["control_guidance_start"] if isinstance(c["control_guidance_start"], list) else \
            [c["control_guidance_start"]] * len(c["controlnets"])
        ends = c["control_guidance_end"] if isinstance(c["control_guidance_end"], list) else \
            [c["control_guidance_end"]] * len(c["controlnets"])
        assert keep == expected_keep(n, starts, ends, multi), (name, keep)
        # the ControlNet runs at every step, also where keep is 0 (with conditioning_scale 0.0)
        top = [x for x in rec.cn_calls if x["tag"] == "top"]
        assert len(top) == n, (name, len(top))
        scales = c["controlnet_conditioning_scale"]
        for i, x in enumerate(top):
            if multi:
                assert x["scale"] == [s * k for s, k in zip(scales, keep[i])], (name, i, x)
            else:
                assert x["scale"] == scales * keep[i], (name, i, x)
        assert len(rec.unet_calls) == n and all(u["has_res"] for u in rec.unet_calls)
        for i, u in enumerate(rec.unet_calls):
            k = keep[i] if not multi else max(keep[i])
            assert (u["res_absmax"] == 0.0) == (k == 0.0), (name, i, u["res_absmax"])
        # the ControlNet's outputs are the UNet's residuals, unchanged
        f, u0 = rec.cn_first["top"], rec.unet_calls[0]
        assert len(f["down"]) == len(u0["down"]) == 9
        assert all(torch.equal(a, b) for a, b in zip(f["down"], u0["down"])) and torch.equal(f["mid"], u0["mid"])
        # the ControlNet and the UNet get the same inputs (guess_mode False: both CFG halves)
        assert torch.equal(f["sample"], u0["sample"]) and f["sample"].shape[0] == (2 if cfg else 1)
        conds = f["controlnet_cond"] if multi else [f["controlnet_cond"]]
        for cond, im in zip(conds, images_in):
            x = torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            assert torch.equal(cond, torch.cat([x, x]) if cfg else x), (name, "control image preprocessing")
        t = {"image": torch.from_numpy(to_u8(out)), "final_latents": steps[-1]["latents"],
             "timesteps": torch.tensor(ts, dtype=torch.float32),
             "controlnet_keep": torch.tensor(keep, dtype=torch.float32)}
        if name == "one_canny_07":
            t["step0_controlnet_cond"] = f["controlnet_cond"]
            t["step0_sample"] = f["sample"]
            t["step0_timestep"] = f["timestep"].reshape(1).to(torch.float32)
            t["step0_encoder_hidden_states"] = f["encoder_hidden_states"]
            t["step0_text_embeds"] = f["text_embeds"]
            t["step0_time_ids"] = f["time_ids"]
            for j, d in enumerate(f["down"]):
                t[f"step0_down_res_{j}"] = d
            t["step0_mid_res"] = f["mid"]
            t["unet_output_step0"] = u0["out"]
            assert f["time_ids"].tolist() == [[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * 2
        if multi:
            a, b = rec.cn_first["net0"], rec.cn_first["net1"]
            assert all(torch.equal(x + y, z) for x, y, z in zip(a["down"], b["down"], f["down"]))
            assert torch.equal(a["mid"] + b["mid"], f["mid"])
            t["step0_mid_res_canny"], t["step0_mid_res_depth"], t["step0_mid_res_sum"] = a["mid"], b["mid"], f["mid"]
        if img2img:
            assert len(rec.prepared) == 1
            t["initial_latents"] = rec.prepared[0]
        assert f["guess_mode"] is False
        if not multi and any(k == 0.0 for k in keep):
            # an implementation may skip the ControlNet where keep is 0 (residuals +0.0 instead of 0 * x): same result
            cn = p.controlnet
            orig = cn.forward

            def skipping(*a, **k):
                down, mid = orig(*a, **k)
                if k["conditioning_scale"] == 0.0:
                    return [torch.zeros_like(d) for d in down], torch.zeros_like(mid)
                return down, mid

            cn.forward = skipping
            p.scheduler = EulerDiscreteScheduler.from_config(base_sched_cfg)
            kw2 = dict(kw, generator=[torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["batch"])],
                       callback_on_step_end=None, callback_on_step_end_tensor_inputs=["latents"])
            try:
                with torch.no_grad():
                    out2 = p(image=images_in[0], height=c["height"], width=c["width"], output_type="latent",
                             **{k: v for k, v in kw2.items() if k != "output_type"}).images
            finally:
                del cn.forward
            assert torch.equal(out2, t["final_latents"]), (name, "skipping the ControlNet where keep is 0")
        # the same run without the ControlNet(s)
        plain = pipes["plain", "img2img" if img2img else "txt2img"]
        plain.scheduler = EulerDiscreteScheduler.from_config(base_sched_cfg)
        pkw = dict(common, generator=[torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["batch"])])
        with torch.no_grad():
            if img2img:
                ref = plain(image=load_png(c["image"]), strength=c["strength"], **pkw).images
            else:
                ref = plain(height=c["height"], width=c["width"], **pkw).images
        du = np.abs(to_u8(ref).astype(np.int32) - t["image"].numpy().astype(np.int32))
        assert du.max() > 0, (name, "the ControlNet must change the image")
        for k, v in t.items():
            v = v.detach().contiguous()
            assert v.dtype in (torch.float32, torch.uint8), (k, v.dtype)
            tensors[f"{name}/{k}"] = v
        m = {k: v for k, v in c.items()}
        m.update(generators=f"[torch.Generator('cpu').manual_seed({c['seed']} + i) for i in range({c['batch']})]",
                 scheduler="EulerDiscreteScheduler (tiny-sdxl scheduler_config.json)", timesteps=ts,
                 controlnet_keep=keep, controlnet_conditioning_scale_per_step=[x["scale"] for x in top],
                 add_time_ids=rec.cn_first["top"]["time_ids"][-1].tolist(),
                 image_vs_no_controlnet=dict(max_abs_diff_u8=int(du.max()), mean_abs_diff_u8=round(float(du.mean()), 3)),
                 keys={k: list(v.shape) for k, v in sorted(t.items())})
        metas.append(m)
        print(f"{name}: timesteps {ts}; keep {keep}; cond scale {[x['scale'] for x in top]}; image mean "
              f"{out.mean():.3f}; vs no ControlNet: max {du.max()} mean {du.mean():.2f}")
    return tensors, metas


def run_resize(pipe):
    """What prepare_image gives for a control image of another size (W 96 x H 80) at 128x128."""
    im = load_png(PNG["canny_small"])
    assert im.size == (96, 80)
    cip = pipe.control_image_processor
    cfg = dict(cip.config)
    assert cfg["do_resize"] and cfg["do_convert_rgb"] and not cfg["do_normalize"] and cfg["resample"] == "lanczos"
    assert cfg["reducing_gap"] is None and cfg["vae_scale_factor"] == 8
    x = cip.preprocess(im, height=128, width=128).to(torch.float32)
    y = pipe.prepare_image(image=im, width=128, height=128, batch_size=1, num_images_per_prompt=1,
                           device=torch.device("cpu"), dtype=torch.float32, do_classifier_free_guidance=False)
    assert torch.equal(x, y) and x.shape == (1, 3, 128, 128)
    # = PIL's own Lanczos resize of the uint8 RGB image, / 255
    pil = np.asarray(im.resize((128, 128), resample=Image.Resampling.LANCZOS))
    assert torch.equal(x, torch.from_numpy(pil.astype(np.float32) / 255.0).permute(2, 0, 1)[None])
    assert np.array_equal(pil, pil_lanczos_u8(np.asarray(im), 128, 128)), "documented PIL Lanczos (upscale)"
    # not a float Lanczos / bilinear / bicubic / nearest resize of the same data
    others = {}
    for mode in ("bilinear", "bicubic", "nearest"):
        src = torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        kw = {} if mode == "nearest" else dict(align_corners=False)
        z = torch.nn.functional.interpolate(src, size=(128, 128), mode=mode, **kw).clamp(0, 1)
        others[f"torch_{mode}_max_abs_diff"] = round(float((z - x).abs().max()), 4)
    # an image at the output size is not resized (PIL.Image.resize returns a copy for the same size)
    same = load_png(PNG["canny"])
    z = cip.preprocess(same, height=128, width=128)
    assert torch.equal(z, torch.from_numpy(np.asarray(same).astype(np.float32) / 255.0).permute(2, 0, 1)[None])
    vals = np.unique(pil)
    meta = dict(image=PNG["canny_small"], size_wh=[96, 80], height=128, width=128,
                control_image_processor=dict(cls="VaeImageProcessor", **{k: cfg[k] for k in sorted(cfg) if not
                                                                        k.startswith("_")}),
                formula="PIL.Image.resize((128, 128), resample=PIL.Image.Resampling.LANCZOS, reducing_gap=None) on the "
                        "RGB uint8 image (before convert('RGB'), which is a no-op for RGB), then float32 / 255, NCHW; "
                        "no normalisation to [-1, 1]",
                pil_lanczos_8bit=pil_lanczos_u8.__doc__.replace("\n    ", " ").strip() + " (reproduced bit for bit "
                                 "by pil_lanczos_u8 in the script: this upscale and the 256 -> 128 and 256 -> 96x80 "
                                 "downscales)",
                distinct_u8_values_after_resize=int(len(vals)), compared_with=others,
                keys={"resize/control_tensor": [1, 3, 128, 128]})
    print(f"resize: 96x80 -> 128x128 with PIL LANCZOS; {len(vals)} distinct values; {others}")
    return {"resize/control_tensor": x.contiguous()}, meta


def run_direct(cn, cond_ref):
    g = torch.Generator("cpu").manual_seed(2025)
    d = {"sample": torch.randn(2, 4, 16, 16, generator=g),
         "encoder_hidden_states": torch.randn(2, 77, C.UNET_CONFIG["cross_attention_dim"], generator=g),
         "text_embeds": torch.randn(2, C.TE2_PROJ, generator=g),
         "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0], [256.0, 192.0, 8.0, 16.0, 128.0, 128.0]]),
         "timestep": torch.tensor([500.0])}
    im = load_png(PNG["canny"])
    x = torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    cond = torch.cat([x, x])
    assert torch.equal(cond, cond_ref), "direct controlnet_cond = one_canny_07/step0_controlnet_cond"
    with torch.no_grad():
        down, mid = cn(d["sample"], torch.tensor(500.0), encoder_hidden_states=d["encoder_hidden_states"],
                       controlnet_cond=cond, conditioning_scale=1.0, guess_mode=False,
                       added_cond_kwargs={"text_embeds": d["text_embeds"], "time_ids": d["time_ids"]},
                       return_dict=False)
        down2, mid2 = cn(d["sample"], torch.tensor(500.0), encoder_hidden_states=d["encoder_hidden_states"],
                         controlnet_cond=cond, conditioning_scale=0.5, guess_mode=False,
                         added_cond_kwargs={"text_embeds": d["text_embeds"], "time_ids": d["time_ids"]},
                         return_dict=False)
    # conditioning_scale multiplies every output (after the zero convolution)
    assert all(torch.equal(a * 0.5, b) for a, b in zip(down, down2)) and torch.equal(mid * 0.5, mid2)
    # how much the control image itself matters (vs an all-black control image)
    with torch.no_grad():
        down0, mid0 = cn(d["sample"], torch.tensor(500.0), encoder_hidden_states=d["encoder_hidden_states"],
                         controlnet_cond=torch.zeros_like(cond), conditioning_scale=1.0, guess_mode=False,
                         added_cond_kwargs={"text_embeds": d["text_embeds"], "time_ids": d["time_ids"]},
                         return_dict=False)
    rel = [round(float((a - b).std() / a.std()), 3) for a, b in zip(down + [mid], down0 + [mid0])]
    print(f"direct: relative change of each residual with a black control image: {rel}")
    t = {f"direct/{k}": v.contiguous() for k, v in d.items()}
    for j, v in enumerate(down):
        t[f"direct/down_res_{j}"] = v.contiguous()
    t["direct/mid_res"] = mid.contiguous()
    shapes = {k: list(v.shape) for k, v in sorted(t.items())}
    print("direct: " + ", ".join(f"{k.split('/')[1]} {tuple(v.shape)} std {v.std():.3f}" for k, v in t.items()
                                  if "res" in k))
    return t, dict(call="controlnet(sample, torch.tensor(500.0), encoder_hidden_states, controlnet_cond, "
                        "conditioning_scale=1.0, guess_mode=False, added_cond_kwargs={text_embeds, time_ids}, "
                        "return_dict=False)", model="tests/fixtures/tiny-controlnet-canny",
                   inputs="sample, encoder_hidden_states, text_embeds = randn in that order from "
                          "torch.Generator('cpu').manual_seed(2025); time_ids rows [128,128,0,0,128,128] and "
                          "[256,192,8,16,128,128]; controlnet_cond = control_canny_128.png / 255 (NCHW) twice = "
                          "one_canny_07/step0_controlnet_cond (not stored again)",
                   check="with conditioning_scale 0.5 every output is exactly 0.5 x these",
                   relative_change_with_black_control_image=rel, keys=shapes)


NOTES = {
    "controlnet_keep": "keep[i] = 1.0 - float(i / N < start or (i + 1) / N > end), N = len(timesteps) actually "
                       "iterated (img2img: after strength), one value per ControlNet (MultiControlNet: a list).",
    "conditioning_scale": "the ControlNet at step i gets conditioning_scale = controlnet_conditioning_scale * keep[i] "
                          "(MultiControlNet: per net); it multiplies every down residual and the mid residual after the "
                          "zero convolutions. The ControlNet still runs when keep is 0 (scale 0.0, residuals exactly "
                          "0): skipping it gives the same numbers.",
    "multi": "MultiControlNetModel runs each net with its own image and scale on the same inputs and sums the outputs "
             "in order: down_j = net0_down_j + net1_down_j, mid = net0_mid + net1_mid.",
    "cfg": "guess_mode False: the ControlNet runs on the CFG-doubled batch, the same sample (scaled latents), timestep, "
           "encoder_hidden_states (rows [negative; positive]), text_embeds and time_ids as the UNet; the control "
           "image is repeated (rows [image; image]). Without CFG (guidance 1.0) everything is one row.",
    "unet": "UNet(sample, t, encoder_hidden_states, added_cond_kwargs, down_block_additional_residuals=down (9), "
            "mid_block_additional_residual=mid): the down path runs unchanged; after it, skip j += down_j (j = 0: "
            "conv_in output; 1, 2: level-0 resnets; 3: level-0 downsampler; 4, 5: level-1 attentions; 6: level-1 "
            "downsampler; 7, 8: level-2 attentions); after the mid block, sample += mid. The up blocks then use the "
            "modified skips (up block 0: skips 8, 7, 6; 1: 5, 4, 3; 2: 2, 1, 0).",
    "controlnet forward": "emb = time_embedding(time_proj(t)) + add_embedding(cat[text_embeds, add_time_proj("
                          "time_ids).reshape(B, 6 * 8)]) (as the UNet); h = conv_in(sample) + "
                          "controlnet_cond_embedding(cond); cond embedding = conv_in(3->4) silu, [conv 3x3, silu, conv "
                          "3x3 stride 2, silu] x 3 (4->4->8, 8->8->8, 8->8->16), conv_out(16->16), no norm; then the "
                          "unet's down blocks and mid block (no up blocks); down_j = controlnet_down_blocks[j](skip_j) "
                          "(1x1 convs), mid = controlnet_mid_block(mid output) (1x1); all times conditioning_scale. "
                          "controlnet_conditioning_channel_order 'rgb': no channel flip; global_pool_conditions false.",
    "control image": "control_image_processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, "
                     "do_normalize=False, resample 'lanczos', reducing_gap None, do_resize True): PIL resize to "
                     "(width, height) with LANCZOS (a no-op copy when the size already matches), convert('RGB'), "
                     "float32 / 255, NCHW, values in [0, 1] (not [-1, 1]).",
    "time ids": "original_size defaults to the preprocessed control image's (H, W) = (128, 128); crops (0, 0); "
                "target (128, 128): add_time_ids = [128, 128, 0, 0, 128, 128] (negative the same).",
}


def main():
    from diffusers import StableDiffusionXLPipeline

    torch.use_deterministic_algorithms(True)
    for p in (os.path.join(TINY, "model_index.json"), os.path.join(OUT, "init_256.png")):
        assert os.path.exists(p), f"{p} missing: run make_tiny_sdxl.py and make_references.py first"

    base = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32, local_files_only=True)
    base.set_progress_bar_config(disable=True)

    # ---- control images -----------------------------------------------------------------------
    tensors, canny_meta = make_control_images()

    # ---- fixtures -----------------------------------------------------------------------------
    canny, canny_factor = build_controlnet(base.unet, 30, 0.0, PNG["canny"])
    depth, depth_factor = build_controlnet(base.unet, 32, ENCODER_JITTER, PNG["depth"])
    canny_sd = save_controlnet(canny, CANNY, CANNY_ST, C.CONTROLNET_CANNY_CONFIG)
    save_controlnet(depth, DEPTH, DEPTH_ST, C.CONTROLNET_DEPTH_CONFIG)
    canny_l = load_controlnet(CANNY, "fp16")
    depth_l = load_controlnet(DEPTH, None)
    check_controlnet_folder(canny, canny_l, C.CONTROLNET_CANNY_CONFIG, "canny")
    check_controlnet_folder(depth, depth_l, C.CONTROLNET_DEPTH_CONFIG, "depth")
    usd = base.unet.state_dict()
    for k, v in canny_l.state_dict().items():
        if k.startswith(ENCODER_PREFIXES):
            assert torch.equal(v, usd[k]), ("canny encoder = the tiny unet's weights", k)
    dsd = depth_l.state_dict()
    assert all(not torch.equal(v, dsd[k]) for k, v in canny_l.state_dict().items()), "every depth tensor differs"
    write_single_file()
    check_single_file(canny_l)
    n = sum(v.numel() for v in canny_sd.values())
    print(f"cond embedding conv_out scale factors: canny {canny_factor:.3f}, depth {depth_factor:.3f}")
    print(f"controlnets: {len(canny_sd)} tensors, {n} params each; canny folder/single file identical; depth "
          f"differs in {sum(not torch.equal(v, dsd[k]) for k, v in canny_l.state_dict().items())} / {len(dsd)} tensors")

    # ---- pipelines ----------------------------------------------------------------------------
    pipes = make_pipelines(base, {"canny": canny_l, "depth": depth_l})
    rec = Recorder()
    # single-ControlNet pipelines: canny's calls are the "top" calls; MultiControlNet: the multi model's calls are,
    # and canny / depth are its sub-calls "net0" / "net1"
    hooks = [rec.watch_unet(base.unet),
             rec.watch_controlnet(canny_l, lambda: "net0" if rec.multi else "top"),
             rec.watch_controlnet(depth_l, lambda: "net1"),
             rec.watch_controlnet(pipes["StableDiffusionXLControlNetPipeline", "multi"].controlnet, lambda: "top")]
    for (kind, _), p in pipes.items():
        if kind != "plain":
            rec.wrap_prepare_latents(p)
    tensors_cases, case_metas = run_cases(pipes, rec, dict(base.scheduler.config))
    tensors.update(tensors_cases)
    for h in hooks:
        h.remove()

    t, resize_meta = run_resize(pipes["StableDiffusionXLControlNetPipeline", "canny"])
    tensors.update(t)
    t, direct_meta = run_direct(canny_l, tensors["one_canny_07/step0_controlnet_cond"])
    tensors.update(t)

    save_file(dict(sorted(tensors.items())), os.path.join(OUT, "controlnet.safetensors"))
    meta = dict(versions=versions(),
                models=dict(base="tests/fixtures/tiny-sdxl", canny="tests/fixtures/tiny-controlnet-canny (variant fp16)",
                            depth="tests/fixtures/tiny-controlnet-depth",
                            init=dict(seeds=dict(canny=[30, 31], depth=[32, 33]), zero_conv_std=ZERO_CONV_STD,
                                      zero_conv_bias_std=ZERO_CONV_BIAS_STD, cond_embedding_gain=COND_GAIN,
                                      cond_embedding_target_std=COND_TARGET_STD,
                                      cond_conv_out_factor=dict(canny=round(canny_factor, 6),
                                                                depth=round(depth_factor, 6)),
                                      depth_encoder_jitter=ENCODER_JITTER),
                            note="fp16 weights, run in float32 on CPU; torch.use_deterministic_algorithms(True)"),
                image_to_uint8="(np_image * 255).round().astype(uint8), np_image = pipeline(output_type='np')",
                file="controlnet.safetensors, keys '<case>/<name>'", notes=NOTES, control_images=canny_meta,
                resize=resize_meta, direct=direct_meta, cases=case_metas)
    write_json(os.path.join(OUT, "controlnet_cases.json"), meta, sort_keys=False)

    for path in outputs():
        os.chmod(path, 0o644)
    print("ok")


def outputs():
    files = [CANNY_FILE, os.path.join(OUT, "controlnet.safetensors"), os.path.join(OUT, "controlnet_cases.json")]
    files += [os.path.join(OUT, f) for f in PNG.values()]
    for d in (CANNY, DEPTH):
        files += [os.path.join(d, f) for f in sorted(os.listdir(d))]
    return files


if __name__ == "__main__":
    main()
    if "--no-rerun" not in sys.argv:
        first = {p: sha(p) for p in outputs()}
        subprocess.run([sys.executable, os.path.abspath(__file__), "--no-rerun"], check=True,
                       stdout=subprocess.DEVNULL)
        second = {p: sha(p) for p in outputs()}
        assert first == second, sorted(k for k in first if first[k] != second.get(k))
        print(f"second run in a fresh process: all {len(first)} outputs byte-identical")
