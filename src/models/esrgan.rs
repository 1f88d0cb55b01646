//! RRDBNet, the network of Real-ESRGAN (basicsr `archs/rrdbnet_arch.py`): residual-in-residual
//! dense blocks at low resolution, then two nearest-neighbour ×2 upsamplings. The ×2 and ×1
//! models see their input pixel-unshuffled, so every variant upsamples ×4 internally.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use super::patchable::PatchableConv2d;
use super::resnet::conv3x3;
use crate::error::{Error, Result};

/// What the published weights imply (read from their shapes, not from a config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrdbConfig {
    /// 3 × 16 / scale² (3 for ×4, 12 for ×2, 48 for ×1).
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_feat: usize,
    pub num_block: usize,
    pub num_grow_ch: usize,
    /// Output pixels per input pixel along each axis: 1, 2 or 4.
    pub scale: usize,
}

impl RrdbConfig {
    /// The scale the input channels imply, or an error for a count no RRDBNet has.
    pub fn scale_for_input_channels(in_channels: usize) -> Result<usize> {
        match in_channels {
            3 => Ok(4),
            12 => Ok(2),
            48 => Ok(1),
            other => Err(Error::ModelLoad(format!("conv_first takes {other} channels: an RRDBNet takes 3 (×4), 12 (×2) or 48 (×1)"))),
        }
    }

    /// Pixel-unshuffle factor of the input (4 / scale).
    fn unshuffle(&self) -> usize {
        4 / self.scale
    }
}

fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    // LeakyReLU(negative_slope=0.2): max(x, 0.2 x) for any x.
    Ok(x.maximum(&(x * 0.2)?)?)
}

/// Five 3×3 convolutions, each seeing the input and every earlier output.
struct ResidualDenseBlock {
    convs: [PatchableConv2d; 5],
}

impl ResidualDenseBlock {
    fn new(vb: VarBuilder, num_feat: usize, num_grow_ch: usize) -> Result<Self> {
        let conv = |i: usize, input: usize, output: usize| conv3x3(vb.pp(format!("conv{i}")), input, output, 1, 1);
        Ok(Self {
            convs: [
                conv(1, num_feat, num_grow_ch)?,
                conv(2, num_feat + num_grow_ch, num_grow_ch)?,
                conv(3, num_feat + 2 * num_grow_ch, num_grow_ch)?,
                conv(4, num_feat + 3 * num_grow_ch, num_grow_ch)?,
                conv(5, num_feat + 4 * num_grow_ch, num_feat)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut features = vec![x.clone()];
        for conv in &self.convs[..4] {
            let next = leaky_relu(&conv.forward(&Tensor::cat(&features, 1)?)?)?;
            features.push(next);
        }
        let last = self.convs[4].forward(&Tensor::cat(&features, 1)?)?;
        Ok(((last * 0.2)? + x)?)
    }
}

struct Rrdb {
    blocks: [ResidualDenseBlock; 3],
}

impl Rrdb {
    fn new(vb: VarBuilder, num_feat: usize, num_grow_ch: usize) -> Result<Self> {
        let block = |i: usize| ResidualDenseBlock::new(vb.pp(format!("rdb{i}")), num_feat, num_grow_ch);
        Ok(Self { blocks: [block(1)?, block(2)?, block(3)?] })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        for block in &self.blocks {
            out = block.forward(&out)?;
        }
        Ok(((out * 0.2)? + x)?)
    }
}

pub struct RrdbNet {
    config: RrdbConfig,
    conv_first: PatchableConv2d,
    body: Vec<Rrdb>,
    conv_body: PatchableConv2d,
    conv_up1: PatchableConv2d,
    conv_up2: PatchableConv2d,
    conv_hr: PatchableConv2d,
    conv_last: PatchableConv2d,
}

impl RrdbNet {
    pub fn new(vb: VarBuilder, config: &RrdbConfig) -> Result<Self> {
        let feat = config.num_feat;
        let body = (0..config.num_block).map(|i| Rrdb::new(vb.pp(format!("body.{i}")), feat, config.num_grow_ch)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: *config,
            conv_first: conv3x3(vb.pp("conv_first"), config.in_channels, feat, 1, 1)?,
            body,
            conv_body: conv3x3(vb.pp("conv_body"), feat, feat, 1, 1)?,
            conv_up1: conv3x3(vb.pp("conv_up1"), feat, feat, 1, 1)?,
            conv_up2: conv3x3(vb.pp("conv_up2"), feat, feat, 1, 1)?,
            conv_hr: conv3x3(vb.pp("conv_hr"), feat, feat, 1, 1)?,
            conv_last: conv3x3(vb.pp("conv_last"), feat, config.out_channels, 1, 1)?,
        })
    }

    pub fn config(&self) -> &RrdbConfig {
        &self.config
    }

    /// (batch, 3, H, W) in [0, 1] → (batch, 3, H·scale, W·scale), not clamped. H and W must be
    /// multiples of the unshuffle factor (the caller pads, as Real-ESRGAN does).
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let input = match self.config.unshuffle() {
            1 => image.clone(),
            factor => pixel_unshuffle(image, factor)?,
        };
        let feat = self.conv_first.forward(&input)?;
        let mut body = feat.clone();
        for block in &self.body {
            body = block.forward(&body)?;
        }
        let mut feat = (&feat + self.conv_body.forward(&body)?)?;
        for conv in [&self.conv_up1, &self.conv_up2] {
            let (_, _, h, w) = feat.dims4()?;
            feat = leaky_relu(&conv.forward(&feat.upsample_nearest2d(2 * h, 2 * w)?)?)?;
        }
        Ok(self.conv_last.forward(&leaky_relu(&self.conv_hr.forward(&feat)?)?)?)
    }
}

/// `F.pixel_unshuffle`: (b, c, h·f, w·f) → (b, c·f², h, w), channel `c·f² + dy·f + dx`.
fn pixel_unshuffle(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % factor != 0 || w % factor != 0 {
        return Err(Error::Internal(format!("pixel_unshuffle of {h}x{w} by {factor}")));
    }
    Ok(x.reshape((b, c, h / factor, factor, w / factor, factor))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * factor * factor, h / factor, w / factor))?)
}
