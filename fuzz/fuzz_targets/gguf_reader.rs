//! Fuzz the GGUF reader on arbitrary bytes: parsing the header, metadata and tensor
//! directory, then reading every tensor (raw bytes, dequantized f32, Q8_0 / Q4_0 blocks)
//! must return `Err` or values that agree with the directory — never panic, overread or
//! allocate without bound.
#![no_main]

use candle_compress::io::gguf_reader::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for name in file.tensor_names().to_vec() {
        let info = file
            .tensor_info(&name)
            .expect("listed tensor has an entry")
            .clone();
        let raw = file.tensor_bytes(&name).expect("validated bounds read");
        assert_eq!(raw.len(), info.size);
        if let Ok(t) = file.tensor_f32(&name) {
            assert_eq!(t.dims(), &info.shape[..]);
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32");
            assert!(v.iter().all(|x| x.is_finite()));
        }
        for (codes, scales) in [file.q8_0_blocks(&name), file.q4_0_blocks(&name)]
            .into_iter()
            .flatten()
        {
            assert_eq!(codes.len(), scales.len() * 32);
            assert_eq!(codes.len(), info.shape.iter().product::<usize>());
        }
    }
});
