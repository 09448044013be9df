//! Issue 15, point 18: an error returned through a candle `Module` reads the same with or
//! without `RUST_BACKTRACE`. Its own test binary: `std::backtrace` reads the variable once
//! per process, so this file sets it before anything else runs.

use candle_compress::nn::smooth::{smooth, Preceding, SmoothFactors};
use candle_compress::Error;
use candle_core::{Device, Tensor};
use candle_nn::Linear;

#[test]
fn module_error_message_is_the_same_with_rust_backtrace() -> Result<(), Box<dyn std::error::Error>>
{
    // SAFETY-free: edition 2021, and this is the only test in the binary (no other thread
    // reads the environment concurrently).
    std::env::set_var("RUST_BACKTRACE", "1");
    let ours = Error::invalid_for_test();
    let expected = ours.to_string();
    let theirs: candle_core::Error = ours.into();
    assert_eq!(theirs.to_string(), expected);
    assert!(
        matches!(theirs, candle_core::Error::Wrapped(_)),
        "{theirs:?}"
    );

    // The same through a real `Module::forward`: a smoothed layer given the wrong width.
    let dev = Device::Cpu;
    let lin = Linear::new(Tensor::new(&[[1f32, 2.0]], &dev)?, None);
    let f = SmoothFactors::from_vec(vec![2.0, 0.5])?;
    let s = smooth(Preceding::Nothing, &[&lin], &f)?;
    let cfg = candle_compress::QuantConfig::w8a8();
    let q = s.linears[0].to_quant_linear(&cfg)?;
    let x = Tensor::new(&[[1f32, 2.0, 3.0]], &dev)?;
    let e = candle_core::Module::forward(&q, &x).expect_err("3 inputs for 2 features");
    let msg = e.to_string();
    assert!(
        !msg.contains("stack backtrace") && !msg.contains('\n'),
        "{msg}"
    );
    Ok(())
}

trait ForTest {
    fn invalid_for_test() -> Self;
}

impl ForTest for Error {
    fn invalid_for_test() -> Self {
        Error::InvalidArgument {
            name: "block_size",
            reason: "must be at least 1, found 0".into(),
        }
    }
}
