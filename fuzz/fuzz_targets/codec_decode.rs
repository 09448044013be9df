//! Fuzz `ActivationCodec::decode` on arbitrary bytes: it must return `Err` or a tensor that
//! agrees with its header, never panic, overread or allocate without bound.
//!
//! Messages are decoded with a cap of 2^22 elements instead of the default 2^26: the code
//! path is the same at every size (the cap itself is checked below), and decoding
//! quarter-gigabyte tensors on every such input would slow the fuzzer to a crawl. The
//! value checks run on tensors of up to 2^20 elements.
#![no_main]

use candle_compress::codec::ActivationCodec;
use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;

const DECODE_CAP: usize = 1 << 22;
const CHECK_CAP: usize = 1 << 20;

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().expect("flatten");
    if t.dtype() == DType::F64 {
        let v = t.to_vec1::<f64>().expect("read back");
        assert!(v.iter().all(|x| x.is_finite()), "non-finite decoded value");
        v.iter().map(|x| x.to_bits()).collect()
    } else {
        // F16/BF16 -> F32 is exact.
        let v = t
            .to_dtype(DType::F32)
            .and_then(|f| f.to_vec1::<f32>())
            .expect("read back");
        assert!(v.iter().all(|x| x.is_finite()), "non-finite decoded value");
        v.iter().map(|x| u64::from(x.to_bits())).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let cpu = Device::Cpu;
    let header = ActivationCodec::read_header(data);
    let decoded = ActivationCodec::decode_with_limit(data, &cpu, DECODE_CAP);
    let Ok(t) = decoded else {
        return;
    };
    // A decodable message has a valid header that matches the tensor.
    let h = header.expect("decode succeeded, so the header must parse");
    assert_eq!(t.shape(), &h.shape);
    assert_eq!(t.dtype(), h.dtype);
    // The element cap refuses instead of allocating.
    let n = h.shape.elem_count();
    if n > 16 {
        assert!(ActivationCodec::decode_with_limit(data, &cpu, 16).is_err());
    }
    if n > CHECK_CAP {
        return;
    }
    // The default entry point agrees.
    let t2 = ActivationCodec::decode(data, &cpu).expect("below both caps");
    let v = bits(&t);
    assert_eq!(v, bits(&t2));
    // The lossless codec round-trips whatever decode produced, bit for bit.
    let again = ActivationCodec::None
        .encode(&t)
        .expect("decoded tensors are encodable");
    let back = ActivationCodec::decode(&again, &cpu).expect("our own encoding decodes");
    assert_eq!(back.dtype(), t.dtype());
    assert_eq!(v, bits(&back));
});
