#!/usr/bin/env python3
"""Tiny Real-ESRGAN (RRDBNet) fixtures and references for Real-ESRGAN's RealESRGANer.enhance.

    /opt/refenv/bin/python tools/reference/make_esrgan_references.py

Needs tests/fixtures/reference/init_256.png (make_references.py) and opencv-python-headless (cv2.cvtColor,
cv2.resize INTER_LANCZOS4). basicsr and realesrgan are NOT installed: the architecture (basicsr
basicsr/archs/rrdbnet_arch.py + arch_util.pixel_unshuffle/make_layer) and the helper (realesrgan/utils.py
RealESRGANer: pre_process, process, tile_process, post_process, enhance) are re-written below line for line,
with the same module and key names.

Writes
  tests/fixtures/esrgan/tiny_x4plus.pth          RRDBNet(3, 3, scale=4, num_feat=8, num_block=3, num_grow_ch=4),
                                                 torch.save({'params_ema': state_dict}) (zip), as RealESRGAN_x4plus.pth
  tests/fixtures/esrgan/tiny_x4plus_anime.pth    RRDBNet(3, 3, 4, num_feat=8, num_block=2, num_grow_ch=4), key 'params'
  tests/fixtures/esrgan/tiny_x2plus.pth          RRDBNet(3, 3, scale=2, num_feat=8, num_block=2, num_grow_ch=4),
                                                 'params_ema' (conv_first has 12 = 3 * 4 input channels)
  tests/fixtures/esrgan/tiny_x4plus.safetensors  tiny_x4plus's tensors as a plain safetensors file (float32)
  tests/fixtures/esrgan/not_esrgan.pth           a valid torch zip with an unrelated state dict
  tests/fixtures/esrgan/malicious.pth            a torch-style zip whose data.pkl calls os.system when unpickled
                                                 (written by hand; never unpickled here)
  tests/fixtures/esrgan/input_48x40.png          init_256.png resized to W 48 x H 40 with Pillow LANCZOS
  tests/fixtures/reference/esrgan.safetensors + esrgan_cases.json

Every reference runs the RRDBNet in float32 on the CPU with the weights read back from the .pth files
(torch.load(weights_only=True)); images are uint8 RGB [H, W, 3]. At the end the script runs itself once more in
a fresh process (--no-rerun) and checks that every output is byte-identical.
"""
import collections
import hashlib
import io
import math
import os
import pickle
import pickletools
import platform
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_sdxl import write_json  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
ESR = os.path.join(FIX, "esrgan")
OUT = os.path.join(FIX, "reference")

INPUT_PNG = "input_48x40.png"
INPUT_WH = (48, 40)
PWNED = "/tmp/sdxl_native_esrgan_pwned"  # what malicious.pth would create if it were unpickled

# name: (file, state-dict key, RRDBNet kwargs, weight seed)
MODELS = {
    "x4plus": ("tiny_x4plus.pth", "params_ema",
               dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=3, num_grow_ch=4), 40),
    "x4plus_anime": ("tiny_x4plus_anime.pth", "params",
                     dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=2, num_grow_ch=4), 41),
    "x2plus": ("tiny_x2plus.pth", "params_ema",
               dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=2, num_grow_ch=4), 42),
}
SAFETENSORS_FILE = "tiny_x4plus.safetensors"

# Per-conv weight gains (weight = N(0,1) * gain / sqrt(fan_in), bias = N(0, 0.05^2)); conv_last is then calibrated
# so that the output has mean 0.45 and std 0.25 per channel on the input image (some values clamp at 0 and 1).
GAIN_FIRST, GAIN_RDB, GAIN_RDB_LAST, GAIN_BODY, GAIN_UP = 1.0, math.sqrt(2.0), 2.0, 1.0, math.sqrt(2.0)
TARGET_MEAN, TARGET_STD = 0.45, 0.25

# (name, model, crop of the input (W, H) or None, RealESRGANer kwargs, outscale)
CASES = [
    ("x4", "x4plus", None, dict(tile=0, tile_pad=10, pre_pad=0), None),
    ("x4_prepad10", "x4plus", None, dict(tile=0, tile_pad=10, pre_pad=10), None),
    ("x4_tiled", "x4plus", None, dict(tile=16, tile_pad=4, pre_pad=0), None),
    ("x4_tiled_prepad10", "x4plus", None, dict(tile=16, tile_pad=10, pre_pad=10), None),
    ("anime", "x4plus_anime", None, dict(tile=0, tile_pad=10, pre_pad=0), None),
    ("x2", "x2plus", None, dict(tile=0, tile_pad=10, pre_pad=0), None),
    ("x2_modpad", "x2plus", (47, 39), dict(tile=0, tile_pad=10, pre_pad=0), None),
    ("x2_prepad_modpad", "x2plus", None, dict(tile=0, tile_pad=10, pre_pad=3), None),
    ("x2_tiled", "x2plus", (47, 39), dict(tile=16, tile_pad=4, pre_pad=0), None),
    ("x4_outscale3", "x4plus", None, dict(tile=0, tile_pad=10, pre_pad=0), 3.0),
    ("x2_outscale3", "x2plus", None, dict(tile=0, tile_pad=10, pre_pad=0), 3.0),
]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --------------------------------------------------------------------------------------------
# basicsr/archs/arch_util.py + basicsr/archs/rrdbnet_arch.py (XPixelGroup/BasicSR), verbatim apart from the
# registry decorator and basicsr's default_init_weights (the fixtures draw their own weights)
# --------------------------------------------------------------------------------------------
def make_layer(basic_block, num_basic_block, **kwarg):
    layers = []
    for _ in range(num_basic_block):
        layers.append(basic_block(**kwarg))
    return nn.Sequential(*layers)


def pixel_unshuffle(x, scale):
    b, c, hh, hw = x.size()
    out_channel = c * (scale**2)
    assert hh % scale == 0 and hw % scale == 0
    h = hh // scale
    w = hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, out_channel, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=64, num_grow_ch=32):
        super(ResidualDenseBlock, self).__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=32):
        super(RRDB, self).__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb1(x)
        out = self.rdb2(out)
        out = self.rdb3(out)
        return out * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch, num_out_ch, scale=4, num_feat=64, num_block=23, num_grow_ch=32):
        super(RRDBNet, self).__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(RRDB, num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        # upsample
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        # upsample
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode='nearest')))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode='nearest')))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out


# --------------------------------------------------------------------------------------------
# realesrgan/utils.py RealESRGANer (xinntao/Real-ESRGAN, v0.3.0), CPU float32: no half, no device, no download;
# the weights come as the already loaded dict; RGB/BGR as in the original (enhance takes cv2's BGR)
# --------------------------------------------------------------------------------------------
class RealESRGANer():
    def __init__(self, scale, loadnet, model, tile=0, tile_pad=10, pre_pad=10):
        self.scale = scale
        self.tile_size = tile
        self.tile_pad = tile_pad
        self.pre_pad = pre_pad
        self.mod_scale = None
        # prefer to use params_ema
        if 'params_ema' in loadnet:
            keyname = 'params_ema'
        else:
            keyname = 'params'
        model.load_state_dict(loadnet[keyname], strict=True)
        model.eval()
        self.model = model
        self.tiles = []  # recorded for the json (not in the original)

    def pre_process(self, img):
        img = torch.from_numpy(np.transpose(img, (2, 0, 1))).float()
        self.img = img.unsqueeze(0)
        # pre_pad
        if self.pre_pad != 0:
            self.img = F.pad(self.img, (0, self.pre_pad, 0, self.pre_pad), 'reflect')
        # mod pad for divisible borders
        if self.scale == 2:
            self.mod_scale = 2
        elif self.scale == 1:
            self.mod_scale = 4
        if self.mod_scale is not None:
            self.mod_pad_h, self.mod_pad_w = 0, 0
            _, _, h, w = self.img.size()
            if (h % self.mod_scale != 0):
                self.mod_pad_h = (self.mod_scale - h % self.mod_scale)
            if (w % self.mod_scale != 0):
                self.mod_pad_w = (self.mod_scale - w % self.mod_scale)
            self.img = F.pad(self.img, (0, self.mod_pad_w, 0, self.mod_pad_h), 'reflect')

    def process(self):
        self.output = self.model(self.img)

    def tile_process(self):
        batch, channel, height, width = self.img.shape
        output_height = height * self.scale
        output_width = width * self.scale
        output_shape = (batch, channel, output_height, output_width)

        # start with black image
        self.output = self.img.new_zeros(output_shape)
        tiles_x = math.ceil(width / self.tile_size)
        tiles_y = math.ceil(height / self.tile_size)

        # loop over all tiles
        for y in range(tiles_y):
            for x in range(tiles_x):
                # extract tile from input image
                ofs_x = x * self.tile_size
                ofs_y = y * self.tile_size
                # input tile area on total image
                input_start_x = ofs_x
                input_end_x = min(ofs_x + self.tile_size, width)
                input_start_y = ofs_y
                input_end_y = min(ofs_y + self.tile_size, height)

                # input tile area on total image with padding
                input_start_x_pad = max(input_start_x - self.tile_pad, 0)
                input_end_x_pad = min(input_end_x + self.tile_pad, width)
                input_start_y_pad = max(input_start_y - self.tile_pad, 0)
                input_end_y_pad = min(input_end_y + self.tile_pad, height)

                # input tile dimensions
                input_tile_width = input_end_x - input_start_x
                input_tile_height = input_end_y - input_start_y
                input_tile = self.img[:, :, input_start_y_pad:input_end_y_pad, input_start_x_pad:input_end_x_pad]

                # upscale tile (the original catches RuntimeError and only prints it)
                with torch.no_grad():
                    output_tile = self.model(input_tile)

                # output tile area on total image
                output_start_x = input_start_x * self.scale
                output_end_x = input_end_x * self.scale
                output_start_y = input_start_y * self.scale
                output_end_y = input_end_y * self.scale

                # output tile area without padding
                output_start_x_tile = (input_start_x - input_start_x_pad) * self.scale
                output_end_x_tile = output_start_x_tile + input_tile_width * self.scale
                output_start_y_tile = (input_start_y - input_start_y_pad) * self.scale
                output_end_y_tile = output_start_y_tile + input_tile_height * self.scale

                # put tile into output image
                self.output[:, :, output_start_y:output_end_y,
                            output_start_x:output_end_x] = output_tile[:, :, output_start_y_tile:output_end_y_tile,
                                                                       output_start_x_tile:output_end_x_tile]
                self.tiles.append(dict(
                    index=y * tiles_x + x, row=y, col=x,
                    input_yx=[input_start_y, input_end_y, input_start_x, input_end_x],
                    padded_input_yx=[input_start_y_pad, input_end_y_pad, input_start_x_pad, input_end_x_pad],
                    output_yx=[output_start_y, output_end_y, output_start_x, output_end_x],
                    crop_of_tile_output_yx=[output_start_y_tile, output_end_y_tile, output_start_x_tile,
                                            output_end_x_tile]))

    def post_process(self):
        # remove extra pad
        if self.mod_scale is not None:
            _, _, h, w = self.output.size()
            self.output = self.output[:, :, 0:h - self.mod_pad_h * self.scale, 0:w - self.mod_pad_w * self.scale]
        # remove prepad
        if self.pre_pad != 0:
            _, _, h, w = self.output.size()
            self.output = self.output[:, :, 0:h - self.pre_pad * self.scale, 0:w - self.pre_pad * self.scale]
        return self.output

    @torch.no_grad()
    def enhance(self, img, outscale=None):
        """img: uint8 BGR [H, W, 3] (cv2.imread). The RGBA, gray and 16-bit branches of the original are left out."""
        import cv2

        h_input, w_input = img.shape[0:2]
        img = img.astype(np.float32)
        assert np.max(img) <= 256 and img.ndim == 3 and img.shape[2] == 3
        max_range = 255
        img = img / max_range
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

        self.pre_process(img)
        self.padded_hw = list(self.img.shape[2:])
        if self.tile_size > 0:
            self.tile_process()
        else:
            self.process()
        output_img = self.post_process()
        self.raw_output = output_img.clone()  # [1, 3, H, W] RGB, cropped, before clamp (not in the original)
        output_img = output_img.data.squeeze().float().cpu().clamp_(0, 1).numpy()
        output_img = np.transpose(output_img[[2, 1, 0], :, :], (1, 2, 0))
        output = (output_img * 255.0).round().astype(np.uint8)
        self.before_resize = output.copy()
        if outscale is not None and outscale != float(self.scale):
            output = cv2.resize(
                output, (
                    int(w_input * outscale),
                    int(h_input * outscale),
                ), interpolation=cv2.INTER_LANCZOS4)
        return output, 'RGB'


# --------------------------------------------------------------------------------------------
# OpenCV's cv2.resize(uint8, INTER_LANCZOS4), re-implemented (checked bit for bit against cv2 below)
# --------------------------------------------------------------------------------------------
_S45 = 0.70710678118654752440084436210485
_CS = [(1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1), (-_S45, _S45)]


def opencv_lanczos4_coeffs(fx):
    """interpolateLanczos4(float x, float* coeffs) of imgproc/src/resize.cpp: float/double exactly as in C."""
    f32 = np.float32
    x = f32(fx)
    y0 = -float(f32(x + f32(3))) * math.pi * 0.25
    s0, c0 = math.sin(y0), math.cos(y0)
    co = np.zeros(8, np.float32)
    total = f32(0)
    for i in range(8):
        y0_ = f32(f32(x + f32(3)) - f32(i))
        if abs(y0_) >= f32(1e-6):
            y = -float(y0_) * math.pi * 0.25
            co[i] = f32((_CS[i][0] * s0 + _CS[i][1] * c0) / (y * y))
        else:
            co[i] = f32(1e30)
        total = f32(total + co[i])
    total = f32(f32(1) / total)
    return (co * total).astype(np.float32)


def opencv_lanczos4_axis(n_in, n_out):
    inv_scale = n_out / n_in  # double
    scale = 1.0 / inv_scale
    idx = np.zeros((n_out, 8), np.int64)
    w = np.zeros((n_out, 8), np.int64)
    for d in range(n_out):
        fx = np.float32((d + 0.5) * scale - 0.5)
        sx = int(math.floor(fx))
        fx = np.float32(fx - np.float32(sx))
        w[d] = np.rint(opencv_lanczos4_coeffs(fx) * np.float32(2048)).astype(np.int64)  # saturate_cast<short>
        idx[d] = np.clip(np.arange(sx - 3, sx + 5), 0, n_in - 1)  # BORDER_REPLICATE
    return idx, w


def opencv_resize_lanczos4_u8(img, width, height):
    h, w = img.shape[:2]
    xi, xw = opencv_lanczos4_axis(w, width)
    yi, yw = opencv_lanczos4_axis(h, height)
    a = img.astype(np.int64)
    t = (a[:, xi, :] * xw[None, :, :, None]).sum(2)  # horizontal pass first, int, no rounding: [h, width, c]
    o = (t[yi, :, :] * yw[:, :, None, None]).sum(1)  # vertical pass
    o = (o + (1 << 21)) >> 22
    return np.clip(o, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
def gain_of(name):
    if name == "conv_first":
        return GAIN_FIRST
    if ".rdb" in name:
        return GAIN_RDB_LAST if name.endswith("conv5") else GAIN_RDB
    if name == "conv_body":
        return GAIN_BODY
    return GAIN_UP  # conv_up1, conv_up2, conv_hr, conv_last (conv_last is calibrated afterwards)


def build_model(kwargs, seed, x):
    torch.manual_seed(seed)
    model = RRDBNet(**kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (gain_of(name) / math.sqrt(fan_in)))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        # calibrate conv_last on the input image (x: [1,3,H,W] in [0,1], H and W divisible for the pixel unshuffle)
        o = model(x)[0]
        b = model.conv_last.bias.clone()
        for c in range(o.shape[0]):
            a = TARGET_STD / float(o[c].std())
            model.conv_last.weight[c] *= a
            model.conv_last.bias[c] = TARGET_MEAN - a * (float(o[c].mean()) - float(b[c]))
    return model


def patch_serialization_id(path):
    """torch.save writes a random <prefix>/.data/serialization_id; replace it with a fixed 40-digit value derived from
    the other records, patching the CRC-32 in the data descriptor and the central directory (nothing else moves)."""
    data = bytearray(open(path, "rb").read())
    z = zipfile.ZipFile(io.BytesIO(bytes(data)))
    infos = z.infolist()
    prefix = infos[0].filename.split("/")[0]
    name = f"{prefix}/.data/serialization_id"
    info = z.getinfo(name)
    old = z.read(name)
    h = hashlib.sha256()
    for i in infos:
        if i.filename != name:
            h.update(i.filename.encode() + b"\0" + z.read(i.filename))
    new = ("%040d" % (int(h.hexdigest(), 16) % 10**40)).encode()
    assert len(old) == len(new) == 40 and info.compress_type == zipfile.ZIP_STORED
    lh = info.header_offset
    assert data[lh:lh + 4] == b"PK\x03\x04"
    flag = struct.unpack("<H", data[lh + 6:lh + 8])[0]
    n, e = struct.unpack("<HH", data[lh + 26:lh + 30])
    start = lh + 30 + n + e
    assert bytes(data[start:start + 40]) == old
    data[start:start + 40] = new
    crc_old, crc = zlib.crc32(old), zlib.crc32(new)
    if flag & 8:  # data descriptor after the data
        dd = start + 40
        if data[dd:dd + 4] == b"PK\x07\x08":
            dd += 4
        assert struct.unpack("<I", data[dd:dd + 4])[0] == crc_old
        struct.pack_into("<I", data, dd, crc)
    else:
        assert struct.unpack("<I", data[lh + 14:lh + 18])[0] == crc_old
        struct.pack_into("<I", data, lh + 14, crc)
    eocd = data.rfind(b"PK\x05\x06")
    count, _, cd = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    p, patched = cd, 0
    for _ in range(count):
        assert data[p:p + 4] == b"PK\x01\x02"
        n, e, c = struct.unpack("<HHH", data[p + 28:p + 34])
        if struct.unpack("<I", data[p + 42:p + 46])[0] == lh:
            assert struct.unpack("<I", data[p + 16:p + 20])[0] == crc_old
            struct.pack_into("<I", data, p + 16, crc)
            patched += 1
        p += 46 + n + e + c
    assert patched == 1
    with open(path, "wb") as f:
        f.write(bytes(data))
    z = zipfile.ZipFile(path)
    assert z.testzip() is None and z.read(name) == new
    return summarize_records([i.filename for i in z.infolist()]), new.decode()


def summarize_records(names):
    """The record names in zip order, with the run of <prefix>/data/0 .. data/N-1 written as one entry."""
    out, run = [], []
    for n in names:
        parts = n.split("/")
        if len(parts) == 3 and parts[1] == "data" and parts[2].isdigit():
            assert int(parts[2]) == len(run)
            run.append(n)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]} .. {run[-1]} ({len(run)} storages)")
            run = []
        out.append(n)
    assert not run
    return out


def save_pth(obj, path):
    torch.save(obj, path)
    return patch_serialization_id(path)


def load_pth(path):
    # only for the files this script wrote with torch.save (never for malicious.pth)
    return torch.load(path, map_location="cpu", weights_only=True)


def write_malicious(path):
    """A torch-style zip (malicious/data.pkl, byteorder, data/0, version) whose pickle is
    {'params_ema': OrderedDict(conv_first.weight=<a real tensor record>, conv_first.bias=os.system(cmd))}.
    The REDUCE of GLOBAL 'posix system' (os.system) runs `touch PWNED` under pickle.load / torch.load(weights_only=False).
    Written with pickle.Pickler and custom __reduce__ hooks: pickling runs nothing."""

    class StorageRef:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class TensorRecord:
        def __init__(self, key, shape):
            self.key, self.shape = key, tuple(shape)

        def __reduce__(self):
            numel = int(np.prod(self.shape))
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return (torch._utils._rebuild_tensor_v2,
                    (StorageRef(self.key, numel), 0, self.shape, stride, False, collections.OrderedDict()))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {PWNED}",))

    class TorchLikePickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    sd = collections.OrderedDict()
    sd["conv_first.weight"] = TensorRecord("0", (8, 3, 3, 3))
    sd["conv_first.bias"] = Payload()
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump({"params_ema": sd})
    pkl = buf.getvalue()
    globals_seen = [arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"]
    assert globals_seen == ["collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                            "posix system"], globals_seen
    ops = [op.name for op, _, _ in pickletools.genops(pkl)]
    assert "REDUCE" in ops and "BINPERSID" in ops
    w = torch.Generator().manual_seed(49)
    data0 = (torch.randn(8 * 3 * 3 * 3, generator=w) * 0.1).numpy().astype("<f4").tobytes()
    records = [("malicious/data.pkl", pkl), ("malicious/byteorder", b"little"), ("malicious/data/0", data0),
               ("malicious/version", b"3\n")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, d in records:
            zi = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            zi.create_system = 0
            zi.external_attr = 0
            z.writestr(zi, d)
    assert zipfile.ZipFile(path).testzip() is None
    return dict(records=[n for n, _ in records], pickle_globals=globals_seen,
                payload=f"os.system('touch {PWNED}') (GLOBAL 'posix system' + REDUCE) as the value of "
                        "params_ema['conv_first.bias'], after one well-formed tensor record",
                pickle_sha256=hashlib.sha256(pkl).hexdigest())


def write_fixtures(x_calib):
    os.makedirs(ESR, exist_ok=True)
    info, models = {}, {}
    for name, (fn, key, kwargs, seed) in MODELS.items():
        model = build_model(kwargs, seed, x_calib[name])
        sd = model.state_dict()
        assert all(v.dtype == torch.float32 for v in sd.values())
        records, sid = save_pth({key: sd}, os.path.join(ESR, fn))
        models[name] = model
        info[fn] = dict(model=name, rrdbnet_kwargs=kwargs, weight_seed=seed, state_dict_key=key,
                        tensors=len(sd), parameters=sum(v.numel() for v in sd.values()),
                        zip_records=records, serialization_id=sid)
    sd = models["x4plus"].state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(ESR, SAFETENSORS_FILE))
    info[SAFETENSORS_FILE] = dict(model="x4plus", note="the tensors of tiny_x4plus.pth, keys = the state-dict keys "
                                  "(no params_ema prefix), float32, no metadata")
    g = torch.Generator().manual_seed(48)
    other = collections.OrderedDict([("linear.weight", torch.randn(4, 3, generator=g)),
                                     ("linear.bias", torch.randn(4, generator=g))])
    records, sid = save_pth({"params_ema": other}, os.path.join(ESR, "not_esrgan.pth"))
    info["not_esrgan.pth"] = dict(content="{'params_ema': OrderedDict(linear.weight [4,3], linear.bias [4])}",
                                  zip_records=records)
    info["malicious.pth"] = write_malicious(os.path.join(ESR, "malicious.pth"))
    return models, info


def check_fixtures(models):
    """Reload every .pth (weights_only) and the safetensors file: bit-identical, keys as published."""
    loaded = {}
    for name, (fn, key, kwargs, _) in MODELS.items():
        ld = load_pth(os.path.join(ESR, fn))
        assert list(ld.keys()) == [key], (fn, list(ld.keys()))
        sd = models[name].state_dict()
        assert isinstance(ld[key], collections.OrderedDict) and list(ld[key].keys()) == list(sd.keys())
        for k, v in sd.items():
            assert ld[key][k].dtype == torch.float32 and torch.equal(ld[key][k], v), (fn, k)
        loaded[name] = ld
    st = load_file(os.path.join(ESR, SAFETENSORS_FILE))
    sd = models["x4plus"].state_dict()
    assert list(st.keys()) == sorted(sd.keys()) and all(torch.equal(st[k], sd[k]) for k in sd)
    ne = load_pth(os.path.join(ESR, "not_esrgan.pth"))
    assert list(ne["params_ema"].keys()) == ["linear.weight", "linear.bias"]
    # key names: RealESRGAN_x4plus.pth's (basicsr RRDBNet) scheme
    keys = list(models["x4plus"].state_dict().keys())
    assert keys[:2] == ["conv_first.weight", "conv_first.bias"]
    assert keys[2:4] == ["body.0.rdb1.conv1.weight", "body.0.rdb1.conv1.bias"]
    assert keys[-10:] == [f"{m}.{p}" for m in ("conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last")
                          for p in ("weight", "bias")]
    assert models["x2plus"].state_dict()["conv_first.weight"].shape == (8, 12, 3, 3)
    return loaded


def state_dict_shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def weight_checks(models, imgs):
    """The random weights give a usable output: not constant, not saturated, depends on the input, and every part
    (the RRDB body, the x0.2 residual scalings) changes the uint8 image."""
    out = {}
    for name, model in models.items():
        x = imgs[name]
        with torch.no_grad():
            o = model(x)
            o_zero = model(torch.zeros_like(x))
            o_flip = model(x.flip(-1)).flip(-1)
            body = model.body
            model.body = nn.Identity()
            o_nobody = model(x)
            model.body = body
            # the residual scaling of the RDBs: 0.2 -> 0.3 must change the output
            orig = ResidualDenseBlock.forward

            def fwd(self, t):
                x1 = self.lrelu(self.conv1(t))
                x2 = self.lrelu(self.conv2(torch.cat((t, x1), 1)))
                x3 = self.lrelu(self.conv3(torch.cat((t, x1, x2), 1)))
                x4 = self.lrelu(self.conv4(torch.cat((t, x1, x2, x3), 1)))
                return self.conv5(torch.cat((t, x1, x2, x3, x4), 1)) * 0.3 + t

            ResidualDenseBlock.forward = fwd
            o_rdb03 = model(x)
            ResidualDenseBlock.forward = orig
        u8 = lambda t: (t.clamp(0, 1) * 255.0).round()  # noqa: E731
        d = lambda a: float((u8(a) - u8(o)).abs().mean())  # noqa: E731
        r = dict(out_mean=round(float(o.mean()), 4), out_std=round(float(o.std()), 4),
                 fraction_below_0=round(float((o < 0).float().mean()), 4),
                 fraction_above_1=round(float((o > 1).float().mean()), 4),
                 mean_abs_u8_diff_zero_input=round(d(o_zero), 2),
                 mean_abs_u8_diff_mirrored_input=round(d(o_flip), 2),
                 mean_abs_u8_diff_without_body=round(d(o_nobody), 2),
                 mean_abs_u8_diff_rdb_residual_0_3=round(d(o_rdb03), 2))
        assert 0.2 < r["out_std"] < 0.35 and 0.001 < r["fraction_below_0"] + r["fraction_above_1"] < 0.1, (name, r)
        assert r["mean_abs_u8_diff_zero_input"] > 10 and r["mean_abs_u8_diff_mirrored_input"] > 5, (name, r)
        assert r["mean_abs_u8_diff_without_body"] > 5 and r["mean_abs_u8_diff_rdb_residual_0_3"] > 1, (name, r)
        out[name] = r
        print(f"{name}: {r}")
    return out


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
def reflect_pad_hwc(a, bottom, right):
    # F.pad(..., 'reflect') on the bottom/right edges = numpy's 'reflect' (the edge pixel is not repeated)
    return np.pad(a, ((0, bottom), (0, right), (0, 0)), mode="reflect")


def independent_check(model, scale, rgb_u8, pre_pad, tile, out_u8, raw):
    """The documented formulas, written independently of the RealESRGANer port (untiled cases: bit for bit)."""
    x = rgb_u8.astype(np.float32) / np.float32(255)
    x = reflect_pad_hwc(x, pre_pad, pre_pad)
    mod = {2: 2, 1: 4}.get(scale)
    mh = mw = 0
    if mod:
        mh, mw = (-x.shape[0]) % mod, (-x.shape[1]) % mod
        x = reflect_pad_hwc(x, mh, mw)
    if tile:
        return mh, mw
    with torch.no_grad():
        o = model(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])
    h, w = rgb_u8.shape[:2]
    o = o[:, :, :h * scale, :w * scale]
    assert torch.equal(o, raw), "independent pad / crop"
    u8 = (o[0].clamp(0, 1).permute(1, 2, 0).numpy() * np.float32(255)).round().astype(np.uint8)
    assert np.array_equal(u8, out_u8), "independent clamp / round"
    return mh, mw


def run_case(name, model_name, crop, kw, outscale, rgb_full, loaded, fresh_model):
    import cv2

    fn, key, kwargs, _ = MODELS[model_name]
    scale = kwargs["scale"]
    rgb = rgb_full if crop is None else rgb_full[:crop[1], :crop[0]].copy()
    up = RealESRGANer(scale, loaded[model_name], fresh_model(model_name), **kw)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread gives
    out_bgr, mode = up.enhance(bgr, outscale=outscale)
    out = np.ascontiguousarray(out_bgr[:, :, ::-1])
    before = np.ascontiguousarray(up.before_resize[:, :, ::-1])
    raw = up.raw_output
    h, w = rgb.shape[:2]
    assert before.shape == (h * scale, w * scale, 3) and raw.shape == (1, 3, h * scale, w * scale)
    mh, mw = independent_check(up.model, scale, rgb, kw["pre_pad"], kw["tile"], before, raw)
    assert (mh, mw) == ((getattr(up, "mod_pad_h", 0), getattr(up, "mod_pad_w", 0)) if up.mod_scale else (0, 0))
    t = {"out": torch.from_numpy(out)}
    meta = dict(name=name, weights=f"tests/fixtures/esrgan/{fn}", state_dict_key=key, netscale=scale,
                input=INPUT_PNG if crop is None else f"{INPUT_PNG} cropped to its top-left W {crop[0]} x H {crop[1]} "
                "(rows 0..H-1, columns 0..W-1; also stored as <case>/input)",
                input_hw=[h, w], tile=kw["tile"], tile_pad=kw["tile_pad"], pre_pad=kw["pre_pad"],
                mod_scale=up.mod_scale, mod_pad_hw=[mh, mw], padded_input_hw=up.padded_hw,
                net_output_hw=[up.padded_hw[0] * scale, up.padded_hw[1] * scale],
                cropped_output_hw=[h * scale, w * scale], outscale=outscale)
    if crop is not None:
        t["input"] = torch.from_numpy(rgb)
    if outscale is not None and outscale != float(scale):
        size = (int(w * outscale), int(h * outscale))
        assert out.shape == (size[1], size[0], 3)
        # per-channel resize: the channel order does not matter, and the numpy re-implementation is bit-exact
        assert np.array_equal(out, cv2.resize(before, size, interpolation=cv2.INTER_LANCZOS4))
        assert np.array_equal(out, opencv_resize_lanczos4_u8(before, *size)), "documented Lanczos4"
        pil = np.asarray(Image.fromarray(before).resize(size, Image.LANCZOS))
        meta.update(resize=f"cv2.resize(out_u8, (int({w} * {outscale}), int({h} * {outscale})) = {size}, "
                           "interpolation=cv2.INTER_LANCZOS4) on the uint8 image (OpenCV's Lanczos4, not Pillow's)",
                    before_resize="the uint8 image of the same run without outscale: "
                                  + ("x4/out" if model_name == "x4plus" else "x2/out"),
                    max_abs_diff_vs_pillow_lanczos=int(np.abs(pil.astype(int) - out).max()))
    else:
        assert np.array_equal(out, before)
    if kw["tile"]:
        meta["tiles"] = up.tiles
        meta["tiles_xy"] = [math.ceil(up.padded_hw[1] / kw["tile"]), math.ceil(up.padded_hw[0] / kw["tile"])]
    return t, meta, raw, before


def versions():
    import cv2

    return dict(torch=torch.__version__, numpy=np.__version__, opencv=cv2.__version__,
                pillow=Image.__version__ if hasattr(Image, "__version__") else None,
                python=platform.python_version(), cpu_capability=torch.backends.cpu.get_cpu_capability())


NOTES = {
    "sources": "basicsr/archs/rrdbnet_arch.py + arch_util.py (XPixelGroup/BasicSR) and realesrgan/utils.py "
               "RealESRGANer + inference_realesrgan.py (xinntao/Real-ESRGAN v0.3.0), re-implemented in the script",
    "loading": "RealESRGANer: loadnet = torch.load(path); keyname = 'params_ema' if 'params_ema' in loadnet else "
               "'params'; model.load_state_dict(loadnet[keyname], strict=True)",
    "defaults": "RealESRGANer(tile=0, tile_pad=10, pre_pad=10); inference_realesrgan.py passes --tile 0, --tile_pad 10, "
                "--pre_pad 0, --outscale 4 by default (so the CLI does not pre-pad). The seed's upscaler_worker.py is "
                "not in the seed document (only its name and the request fields enabled/factor/method/model/tile/"
                "tile_pad), so which pre_pad it used is unknown: the cases cover pre_pad 0 and 10.",
    "input": "enhance(img) takes cv2.imread's BGR uint8 [H,W,3]: img = img.astype(float32) / 255 (float32 division, "
             "max_range 255 since max <= 256); cvtColor(BGR2RGB) (exact channel swap); NCHW [1,3,H,W]. The network "
             "sees RGB. A caller that passes an RGB array (PIL) feeds BGR to the network (and gets RGB back); these "
             "references use the intended order: input_48x40.png's RGB is the network's RGB.",
    "pre_pad": "if pre_pad != 0: img = F.pad(img, (0, pre_pad, 0, pre_pad), 'reflect'): ONLY the right and the bottom "
               "edges, reflect without repeating the edge pixel (padded[H + i] = img[H - 2 - i]; numpy mode "
               "'reflect'); needs pre_pad < H and < W",
    "mod_pad": "after pre_pad: mod_scale = 2 for netscale 2, 4 for netscale 1, none for 4; on the pre-padded size (h, w): "
               "mod_pad_h = (mod_scale - h % mod_scale) if h % mod_scale else 0, same for w; img = F.pad(img, (0, "
               "mod_pad_w, 0, mod_pad_h), 'reflect') (right/bottom, reflecting the pre-padded image)",
    "network": "RRDBNet.forward: netscale 2: pixel_unshuffle(x, 2) (view [b,c,h,2,w,2] -> permute(0,1,3,5,2,4) -> "
               "[b,4c,h,w], channel index c*4 + dy*2 + dx, = torch's F.pixel_unshuffle), netscale 1: pixel_unshuffle(x, "
               "4); feat = conv_first(.); feat = feat + conv_body(body(feat)); feat = lrelu(conv_up1(nearest x2(feat))); "
               "feat = lrelu(conv_up2(nearest x2(feat))); out = conv_last(lrelu(conv_hr(feat))). Every conv 3x3, "
               "stride 1, zero padding 1, with bias; lrelu slope 0.2. RDB: x1 = lrelu(conv1(x)), x2 = lrelu(conv2(cat(x, "
               "x1))), x3 = lrelu(conv3(cat(x, x1, x2))), x4 = lrelu(conv4(cat(x, x1, x2, x3))), x5 = conv5(cat(x, x1, "
               "x2, x3, x4)); return x5 * 0.2 + x (cat on channels in that order). RRDB: rdb3(rdb2(rdb1(x))) * 0.2 + x. "
               "The output of every netscale is 4x the network input's size / the unshuffle factor: netscale x the "
               "padded input.",
    "tile_process": "only if tile > 0, on the pre-padded and mod-padded image (height, width): output = zeros(1, 3, "
                    "height*s, width*s); tiles_x = ceil(width / tile), tiles_y = ceil(height / tile); row-major loop "
                    "(y outer, x inner); tile (y, x): input x range [x*tile, min(x*tile + tile, width)) (same for y); "
                    "padded range [max(start - tile_pad, 0), min(end + tile_pad, height/width)) - clamped at the image "
                    "border, no padding beyond it; output_tile = model(img[:, :, padded y range, padded x range]); "
                    "the part [(start - start_pad)*s, + (end - start)*s) of output_tile (both axes) is copied to "
                    "output[start*s : end*s]. Tiles do not overlap in the output and are not blended. The edge tiles "
                    "are smaller. netscale 2 tiles must have even sizes (pixel_unshuffle asserts): with an odd tile_pad "
                    "or odd tile the border tiles are odd and the assertion fails (checked: tile 16 / tile_pad 3). The "
                    "original catches RuntimeError from the model and only prints it (the tile then reuses the "
                    "previous output_tile, or NameError for the first).",
    "post_process": "crop the mod pad first: output[:, :, 0 : h - mod_pad_h*s, 0 : w - mod_pad_w*s], then the pre-pad: "
                    "output[:, :, 0 : h' - pre_pad*s, 0 : w' - pre_pad*s] (both only at the right/bottom) -> [1,3,H*s,W*s]",
    "to_uint8": "output.squeeze().float().clamp_(0, 1) (float32), RGB -> BGR, HWC, then (x * 255.0).round() in float32 "
                "(numpy round: half to even) .astype(uint8). out_float is the float32 tensor after the crops, BEFORE "
                "the clamp: out = round_half_even(clamp(out_float, 0, 1) * 255) in float32 (checked bit for bit).",
    "outscale": "if outscale is not None and outscale != float(netscale): output = cv2.resize(output_uint8, "
                "(int(w_input * outscale), int(h_input * outscale)), interpolation=cv2.INTER_LANCZOS4) with "
                "(w_input, h_input) the ORIGINAL input size (int() truncates). OpenCV's Lanczos4 on the uint8 image "
                "(not Pillow's Lanczos3, which differs): see lanczos4.",
    "lanczos4": "cv2.resize INTER_LANCZOS4 for uint8 (opencv 5.0.0, re-implemented and checked bit for bit on these "
                "cases and on random images of other sizes, up and down): per axis, scale = 1 / (dst/src) (double); for "
                "each output index d: fx = float32((d + 0.5) * scale - 0.5), sx = floor(fx), fx -= sx (float32); "
                "8 taps at sx-3 .. sx+4 clamped to [0, n-1] (BORDER_REPLICATE); coefficients = interpolateLanczos4(fx): "
                "y0 = -(float32(fx + 3)) * pi/4 (double), s0 = sin(y0), c0 = cos(y0); for i in 0..7: t = float32(fx + 3 - "
                "i); if |t| >= 1e-6: y = -t*pi/4, c_i = float32((cs[i][0]*s0 + cs[i][1]*c0) / y^2) with cs = [(1,0), "
                "(-r,-r), (0,1), (r,-r), (-1,0), (r,r), (0,-1), (-r,r)], r = sqrt(1/2); else c_i = 1e30; sum in "
                "float32, c_i *= float32(1/sum); integer weights w_i = round_half_even(c_i * 2048) (not renormalised). "
                "Horizontal pass first: int sums S = sum_i w_i * px (no rounding), then vertical: v = sum_j w_j * S_j; "
                "out = clamp((v + 2^21) >> 22, 0, 255). There is no antialiasing when downscaling (always 8 taps).",
    "images": "every image key is uint8 [H, W, 3] RGB; out_float is float32 [1, 3, H, W] RGB",
}


def main():
    import cv2

    torch.use_deterministic_algorithms(True)
    src = os.path.join(OUT, "init_256.png")
    assert os.path.exists(src), f"{src} missing: run make_references.py first"
    os.makedirs(ESR, exist_ok=True)

    # ---- input image ---------------------------------------------------------------------------
    init = Image.open(src).convert("RGB")
    small = init.resize(INPUT_WH, Image.LANCZOS)
    small.save(os.path.join(ESR, INPUT_PNG), optimize=False)
    rgb = np.asarray(Image.open(os.path.join(ESR, INPUT_PNG)).convert("RGB")).copy()
    assert rgb.shape == (40, 48, 3) and np.array_equal(rgb, np.asarray(small))
    x = torch.from_numpy(rgb.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None].contiguous()
    assert torch.equal(pixel_unshuffle(x, 2), F.pixel_unshuffle(x, 2)) and torch.equal(pixel_unshuffle(x, 4),
                                                                                      F.pixel_unshuffle(x, 4))
    bgr_f = rgb[:, :, ::-1].astype(np.float32) / 255
    assert np.array_equal(cv2.cvtColor(bgr_f, cv2.COLOR_BGR2RGB), rgb.astype(np.float32) / 255)

    # ---- fixtures ------------------------------------------------------------------------------
    calib = {k: x for k in MODELS}
    models, fixture_info = write_fixtures(calib)
    loaded = check_fixtures(models)
    wchecks = weight_checks(models, calib)
    assert not os.path.exists(PWNED)

    def fresh_model(name):
        return RRDBNet(**MODELS[name][2])

    # the safetensors file gives the same network
    m_st = fresh_model("x4plus")
    m_st.load_state_dict(load_file(os.path.join(ESR, SAFETENSORS_FILE)), strict=True)
    with torch.no_grad():
        assert torch.equal(m_st(x), models["x4plus"](x))

    # ---- RealESRGANer checks -------------------------------------------------------------------
    # a tile covering the whole (padded) image gives the untiled output bit for bit
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for model_name, pp in (("x4plus", 0), ("x4plus", 10), ("x2plus", 3)):
        a = RealESRGANer(MODELS[model_name][2]["scale"], loaded[model_name], fresh_model(model_name), tile=0,
                         pre_pad=pp).enhance(bgr)[0]
        b = RealESRGANer(MODELS[model_name][2]["scale"], loaded[model_name], fresh_model(model_name), tile=64,
                         tile_pad=10, pre_pad=pp).enhance(bgr)[0]
        assert np.array_equal(a, b), (model_name, pp)
    # netscale 2 with an odd tile_pad: the border tiles are odd and pixel_unshuffle's assertion fails
    try:
        RealESRGANer(2, loaded["x2plus"], fresh_model("x2plus"), tile=16, tile_pad=3, pre_pad=0).enhance(bgr)
        raise SystemExit("expected pixel_unshuffle to refuse an odd tile")
    except AssertionError:
        pass
    # the documented Lanczos4 on random images, up and down, odd sizes
    rng = np.random.default_rng(0)
    for (h, w, H, W) in [(160, 192, 120, 144), (80, 96, 120, 144), (39, 47, 100, 31), (50, 50, 50, 51),
                         (7, 9, 30, 40), (100, 120, 33, 29)]:
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(cv2.resize(im, (W, H), interpolation=cv2.INTER_LANCZOS4),
                              opencv_resize_lanczos4_u8(im, W, H)), ("lanczos4", h, w, H, W)

    # ---- cases ---------------------------------------------------------------------------------
    tensors, metas, outs = {}, [], {}
    for (name, model_name, crop, kw, outscale) in CASES:
        t, meta, raw, before = run_case(name, model_name, crop, kw, outscale, rgb, loaded, fresh_model)
        outs[name] = (t["out"].numpy(), raw, before)
        if name == "x4":
            t["out_float"] = raw.contiguous()
        tensors.update({f"{name}/{k}": v.contiguous() for k, v in t.items()})
        meta["keys"] = {f"{name}/{k}": [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in t.items()}
        metas.append(meta)
        print(f"{name}: out {list(t['out'].shape)} padded {meta['padded_input_hw']} mod_pad {meta['mod_pad_hw']}"
              + (f" tiles {meta['tiles_xy']}" if kw["tile"] else ""))

    # comparisons between cases
    x4 = outs["x4"][0]
    tensors["x4_tiled/untiled"] = torch.from_numpy(x4.copy())
    m = {c["name"]: c for c in metas}
    m["x4_tiled"]["keys"]["x4_tiled/untiled"] = ["uint8", list(x4.shape)]
    for tiled, untiled in (("x4_tiled", "x4"), ("x4_tiled_prepad10", "x4_prepad10"), ("x2_tiled", "x2_modpad")):
        d = np.abs(outs[tiled][0].astype(int) - outs[untiled][0])
        assert d.max() > 0, "tiling must change the image"
        m[tiled].update(untiled_case=untiled, max_abs_u8_diff_vs_untiled=int(d.max()),
                        mean_abs_u8_diff_vs_untiled=round(float(d.mean()), 3))
    m["x4_tiled"]["untiled_key"] = "x4_tiled/untiled (= x4/out, the same run without tiling)"
    d = np.abs(outs["x4_prepad10"][0].astype(int) - x4)
    assert d.max() > 0
    m["x4_prepad10"].update(max_abs_u8_diff_vs_x4=int(d.max()), mean_abs_u8_diff_vs_x4=round(float(d.mean()), 3))
    d = np.abs(outs["x2_prepad_modpad"][0].astype(int) - outs["x2"][0])
    assert d.max() > 0
    m["x2_prepad_modpad"].update(max_abs_u8_diff_vs_x2=int(d.max()))
    assert np.array_equal(outs["x4_outscale3"][2], x4) and np.array_equal(outs["x2_outscale3"][2], outs["x2"][0])
    d = np.abs(outs["anime"][0].astype(int) - x4)
    assert d.max() > 0
    # values exactly on a .5 boundary after * 255 (round half to even matters there)
    of = outs["x4"][1].clamp(0, 1) * 255.0
    m["x4"]["out_float_values_at_half"] = int((of - of.floor() == 0.5).sum())

    for k, v in tensors.items():
        assert v.dtype in (torch.uint8, torch.float32), k
    save_file(dict(sorted(tensors.items())), os.path.join(OUT, "esrgan.safetensors"))
    files = {}
    for fn in sorted(os.listdir(ESR)):
        p = os.path.join(ESR, fn)
        os.chmod(p, 0o644)
        files[fn] = dict(bytes=os.path.getsize(p), sha256=sha(p))
    for fn in fixture_info:
        fixture_info[fn].update(files[fn])
    meta = dict(
        versions=versions(),
        file="esrgan.safetensors, keys '<case>/<name>'",
        input=dict(file=f"tests/fixtures/esrgan/{INPUT_PNG}", how="Image.open(init_256.png).convert('RGB').resize((48, "
                   "40), Image.LANCZOS), saved with optimize=False", hw=[40, 48], **files[INPUT_PNG]),
        fixtures=fixture_info,
        weights=dict(how="per model: torch.Generator().manual_seed(weight_seed); for each Conv2d in named_modules order: "
                     "weight = randn(shape) * gain / sqrt(fan_in), bias = randn * 0.05; gains: conv_first 1, RDB conv1-4 "
                     "sqrt 2, RDB conv5 2, conv_body 1, conv_up1/up2/hr/last sqrt 2; then conv_last row c scaled by a_c and "
                     "its bias set so that the network output on input_48x40.png (/255, untiled, no padding) has mean "
                     f"{TARGET_MEAN} and std {TARGET_STD} per channel",
                     checks=wchecks,
                     state_dict_keys={"tiny_x4plus.pth": state_dict_shapes(models["x4plus"]),
                                      "tiny_x2plus.pth (differs only in conv_first.weight [8,12,3,3] and has body.0-1)":
                                          {"conv_first.weight": [8, 12, 3, 3]}}),
        notes=NOTES,
        cases=metas,
    )
    write_json(os.path.join(OUT, "esrgan_cases.json"), meta, sort_keys=False)
    for fn in ("esrgan.safetensors", "esrgan_cases.json"):
        os.chmod(os.path.join(OUT, fn), 0o644)
    assert not os.path.exists(PWNED)
    total = sum(f["bytes"] for f in files.values())
    print(f"esrgan fixtures: {total} bytes in {len(files)} files; esrgan.safetensors "
          f"{os.path.getsize(os.path.join(OUT, 'esrgan.safetensors'))} bytes; ok")


def outputs():
    files = [os.path.join(ESR, f) for f in sorted(os.listdir(ESR))]
    return files + [os.path.join(OUT, "esrgan.safetensors"), os.path.join(OUT, "esrgan_cases.json")]


if __name__ == "__main__":
    main()
    if "--no-rerun" not in sys.argv:
        first = {p: sha(p) for p in outputs()}
        subprocess.run([sys.executable, os.path.abspath(__file__), "--no-rerun"], check=True,
                       stdout=subprocess.DEVNULL)
        second = {p: sha(p) for p in outputs()}
        assert first == second, sorted(k for k in first if first[k] != second.get(k))
        print(f"second run in a fresh process: all {len(first)} outputs byte-identical")
