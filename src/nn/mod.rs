//! candle modules built on the quantizers and kernels.

pub mod observer;
pub mod quant_linear;
pub mod smooth;

pub use observer::ObservedLinear;

pub use quant_linear::{
    ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, QuantizedActivations, WeightQuant,
};

pub mod awq;
pub mod gptq;
pub mod gram;
pub mod sequential;
