//! Slow, obviously correct reimplementations that results are checked against.

/// Nearest-rank percentile `p` (in percent) of `|values|` by a full sort: the element at
/// rank `ceil(p/100 · n)`, clamped to `[1, n]`. `values` must not be empty.
pub fn sorted_percentile(values: &[f32], p: f32) -> f32 {
    let mut m: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    m.sort_by(f32::total_cmp);
    let r = ((f64::from(p) / 100.0) * m.len() as f64).ceil() as usize;
    m[r.clamp(1, m.len()) - 1]
}

/// `y = x · Wᵀ (+ b)` for row-major `x` `[rows, inp]` and `w` `[out, inp]`, each dot
/// product accumulated in f64 and rounded to f32 once (the bias added in f64 first).
pub fn linear_f64(
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    inp: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let acc: f64 = (0..inp)
                .map(|k| f64::from(x[r * inp + k]) * f64::from(w[o * inp + k]))
                .sum();
            y[r * out + o] = match bias {
                Some(b) => (acc + f64::from(b[o])) as f32,
                None => acc as f32,
            };
        }
    }
    y
}
