//! candle modules built on the quantizers and kernels.

pub mod quant_linear;

pub use quant_linear::{
    ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, QuantizedActivations, WeightQuant,
};
