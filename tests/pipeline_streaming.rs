//! `Pipeline::run_streaming` (one tensor in memory at a time) gives exactly what
//! `Pipeline::run` gives over the same tensors, including global thresholds and their ties.

use std::cell::Cell;
use std::collections::HashMap;

use candle_compress::prune::{Pipeline, StoredTensor};
use candle_core::{DType, Device, Tensor};

mod common;

use common::rng::XorShift64;
use common::tensors::flat_f32;

fn model(seed: u64) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut rng = XorShift64(seed);
    let mut t = |dims: &[usize], dtype: DType| {
        let n: usize = dims.iter().product();
        // Values on a coarse grid: many exact ties at any threshold.
        let v: Vec<f32> = (0..n)
            .map(|_| ((rng.next_u64() % 17) as f32 - 8.0) * 0.125)
            .collect();
        Tensor::from_vec(v, dims, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    HashMap::from([
        ("a.weight".to_string(), t(&[8, 64], DType::F32)),
        ("b.weight".to_string(), t(&[16, 30], DType::F16)), // 30: not a multiple of 4
        ("c.weight".to_string(), t(&[4, 4, 8], DType::BF16)),
        ("c.bias".to_string(), t(&[4], DType::F32)), // rank 1: skipped
        ("embed.weight".to_string(), t(&[10, 8], DType::F32)),
    ])
}

/// A stored tensor's values, densified, as f32.
fn dense(t: &StoredTensor) -> Vec<f32> {
    flat_f32(&t.to_dense(&Device::Cpu).unwrap())
}

#[test]
fn streaming_equals_in_memory_for_every_stage_mix() {
    let pipelines = [
        Pipeline::new().prune_global(0.55),
        Pipeline::new().prune_magnitude(0.3).prune_global(0.6),
        Pipeline::new()
            .prune_nm(2, 4)
            .prune_global(0.7)
            .clip_percentile(99.0),
        Pipeline::new()
            .prune_global(0.3)
            .prune_global(0.5)
            .quantize("int8:32".parse().unwrap()),
        Pipeline::new()
            .clip_percentile(95.0)
            .quantize("int4:32".parse().unwrap()),
        Pipeline::new().prune_global(0.0),
        Pipeline::new().prune_global(1.0).skip_names(["embed"]),
    ];
    for (seed, p) in pipelines.iter().enumerate() {
        for sparse in [true, false] {
            let p = p.clone().sparse_storage(sparse);
            let tensors = model(seed as u64 + 11);
            let whole = p.run(&tensors).unwrap();
            let names: Vec<String> = tensors.keys().cloned().collect();
            let loads = Cell::new(0usize);
            let mut emitted = Vec::new();
            let report = p
                .run_streaming(
                    &names,
                    |n| {
                        loads.set(loads.get() + 1);
                        Ok(tensors[n].clone())
                    },
                    |n, t| {
                        emitted.push((n.to_string(), t));
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(report, whole.report, "pipeline {seed} sparse {sparse}");
            assert!(loads.get() <= names.len() * p.streaming_passes());
            let mut order: Vec<&String> = whole.tensors.keys().collect();
            order.sort();
            let got: Vec<&String> = emitted.iter().map(|(n, _)| n).collect();
            assert_eq!(got, order, "emitted in name order");
            for (name, stored) in &emitted {
                let want = &whole.tensors[name];
                assert_eq!(stored.kind(), want.kind(), "{name}");
                assert_eq!(dense(stored), dense(want), "pipeline {seed}: {name}");
            }
        }
    }
}

#[test]
fn load_and_emit_errors_stop_the_run() {
    let tensors = model(3);
    let names: Vec<String> = tensors.keys().cloned().collect();
    let p = Pipeline::new().prune_global(0.5);
    let err = p
        .run_streaming(
            &names,
            |n| {
                if n == "b.weight" {
                    Err(candle_compress::Error::Missing {
                        what: "tensor",
                        name: n.into(),
                    })
                } else {
                    Ok(tensors[n].clone())
                }
            },
            |_, _| Ok(()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("b.weight"), "{err}");
    let mut emitted = 0;
    let err = p
        .run_streaming(
            &names,
            |n| Ok(tensors[n].clone()),
            |_, _| {
                emitted += 1;
                Err(candle_compress::Error::Missing {
                    what: "space",
                    name: "disk".into(),
                })
            },
        )
        .unwrap_err();
    assert_eq!(emitted, 1);
    assert!(err.to_string().contains("disk"));
    // NaN in a tensor: the same error as the in-memory run.
    let mut bad = tensors.clone();
    bad.insert(
        "a.weight".into(),
        Tensor::new(&[[1f32, f32::NAN]], &Device::Cpu).unwrap(),
    );
    let e = p
        .run_streaming(&names, |n| Ok(bad[n].clone()), |_, _| Ok(()))
        .unwrap_err();
    assert!(matches!(e, candle_compress::Error::NonFinite { .. }), "{e}");
}
