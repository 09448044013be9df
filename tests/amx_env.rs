//! `CANDLE_COMPRESS_ISA` forces a lower kernel path for the whole process: each request
//! runs in a child process (the variable is read once), which checks the active ISA and
//! computes W8A8 / W4A8 products at AMX-sized batches; every child must print the same
//! output bits (AMX, VNNI, AVX2 and scalar agree).

use std::process::Command;

use candle_compress::kernels::gemm::{self, GemmKernels, PackedW4, PackedW8};
use candle_compress::kernels::{active_isa, features, Isa, ISA_ENV};

/// The variable carrying the expected ISA to the child.
const EXPECT: &str = "CANDLE_COMPRESS_TEST_EXPECT_ISA";

/// FNV-1a over the output bits.
fn digest(vals: &[f32]) -> u64 {
    vals.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
    })
}

/// The child's work: the process-wide free functions, on batches above the AMX row
/// threshold and below it.
fn products() -> String {
    let (n, k): (usize, usize) = (40, 300);
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 7919) % 255) as u8 as i8).collect();
    let w4: Vec<i8> = (0..n * k).map(|i| ((i * 31) % 16) as i8 - 8).collect();
    let ws: Vec<f32> = (0..n).map(|i| 0.001 * (i as f32 + 1.0)).collect();
    let ws4: Vec<f32> = (0..n * k.div_ceil(64))
        .map(|i| 0.01 * (i % 7) as f32 + 0.002)
        .collect();
    let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
    let p = PackedW8::pack(&w, &ws, n, k).unwrap();
    let p4 = PackedW4::pack(&w4, &ws4, n, k, 64).unwrap();
    let mut line = String::new();
    for rows in [1, 8, 16, 33, 64] {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104729) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let (mut q, mut s) = (vec![0i8; rows * k], vec![0f32; rows]);
        gemm::quantize_rows_i8(&x, k, None, &mut q, &mut s).unwrap();
        let mut out = vec![0f32; rows * n];
        gemm::matmul_w8a8(&q, &s, rows, &p, Some(&bias), &mut out).unwrap();
        let mut out4 = vec![0f32; rows * n];
        gemm::matmul_w4a8(&q, &s, rows, &p4, None, &mut out4).unwrap();
        line += &format!("{:016x}{:016x}", digest(&out), digest(&out4));
    }
    line
}

#[test]
#[ignore = "run by forced_isa_lowers_the_path_and_keeps_the_bits in a child process"]
fn child_runs_the_forced_isa() {
    let expect: Isa = std::env::var(EXPECT)
        .expect("run by the parent test")
        .parse()
        .unwrap();
    assert_eq!(active_isa(), expect);
    assert_eq!(GemmKernels::active().isa(), expect);
    println!("DIGEST {}", products());
}

#[test]
fn forced_isa_lowers_the_path_and_keeps_the_bits() {
    let exe = std::env::current_exe().unwrap();
    let mut digests = Vec::new();
    for req in [
        "amx",
        "avx512-vnni",
        "avx-vnni",
        "avx2",
        "neon",
        "scalar",
        "bogus",
        "",
    ] {
        let (want, _) = features().isa_for_request(Some(req));
        let out = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_runs_the_forced_isa",
                "--nocapture",
            ])
            .env(ISA_ENV, req)
            .env(EXPECT, want.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ISA_ENV}={req:?} (expected {want}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = stdout
            .lines()
            .find_map(|l| l.strip_prefix("DIGEST "))
            .unwrap_or_else(|| panic!("no digest from the child for {req:?}: {stdout}"))
            .to_string();
        eprintln!("{ISA_ENV}={req:?}: ran {want}");
        digests.push((req, d));
    }
    // and this process, unforced (or as the caller's environment says)
    digests.push(("(this process)", products()));
    for (req, d) in &digests {
        assert_eq!(
            d, &digests[0].1,
            "{req:?} gave other bits than {:?}",
            digests[0].0
        );
    }
    if !features().supports(Isa::Amx) {
        candle_compress::kernels::detect::report_skipped(
            Isa::Amx,
            "forced_isa_lowers_the_path_and_keeps_the_bits (AMX vs forced VNNI)",
        );
    }
}
