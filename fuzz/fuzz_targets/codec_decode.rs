//! Fuzz `ActivationCodec::decode` on arbitrary bytes: it must return `Err` or a tensor that
//! agrees with its header, never panic, overread or allocate without bound.
#![no_main]

use candle_compress::codec::ActivationCodec;
use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cpu = Device::Cpu;
    let Ok(t) = ActivationCodec::decode(data, &cpu) else {
        return;
    };
    // A decodable message has a valid header that matches the tensor.
    let h = ActivationCodec::read_header(data).expect("decode succeeded, header must parse");
    assert_eq!(t.shape(), &h.shape);
    assert_eq!(t.dtype(), h.dtype);
    // Every decoded value is finite.
    let v = t
        .flatten_all()
        .and_then(|f| f.to_dtype(DType::F64))
        .and_then(|f| f.to_vec1::<f64>())
        .expect("read back");
    assert!(v.iter().all(|x| x.is_finite()));
    // The lossless codec round-trips whatever decode produced, bit for bit.
    let again = ActivationCodec::None.encode(&t).expect("decoded tensors are encodable");
    let back = ActivationCodec::decode(&again, &cpu).expect("our own encoding decodes");
    let w = back
        .flatten_all()
        .and_then(|f| f.to_dtype(DType::F64))
        .and_then(|f| f.to_vec1::<f64>())
        .expect("read back");
    assert_eq!(
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        w.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    // A tight element cap refuses instead of allocating.
    if h.shape.elem_count() > 16 {
        assert!(ActivationCodec::decode_with_limit(data, &cpu, 16).is_err());
    }
});
